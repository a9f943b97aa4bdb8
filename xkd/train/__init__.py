"""Pretraining: typed config, checkpoints, distributed helpers and the training engine."""
