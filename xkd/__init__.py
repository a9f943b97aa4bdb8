"""The XKD pipeline's library: data caches and views, training, evaluation and tracking.

The step entry points that dvc.yaml, the KFP DAG and the TrainJob call live in `components/`; the pure
PyTorch model in `model/`. Nothing here parses a command line.
"""
