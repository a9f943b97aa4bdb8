"""Media, tar shards, cache directories, input views and the pretraining dataset."""
