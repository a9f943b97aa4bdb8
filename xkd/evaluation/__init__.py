"""Downstream evaluation: datasets and folds, evaluation views, frozen features, protocols, fine-tuning."""
