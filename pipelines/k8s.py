"""Kubernetes settings shared by the KFP DAG (`pipelines/dag.py`) and the TrainJob launcher (`pipelines/trainjob.py`):
one definition, so the pipeline pods and the TrainJob pods see the same mounts, Secret keys and resources."""

DATA_MOUNT = "/data"  # where the caches/outputs PVC is mounted in every pod
PVC_NAME = "xkd-data"  # the default PersistentVolumeClaim (pipeline parameter `pvc_name`)
SHM_SIZE = "16Gi"  # memory-backed /dev/shm for DataLoader workers (GPU pods)
SHM_MOUNT = "/dev/shm"
GPU_RESOURCE = "nvidia.com/gpu"
TRAINER_RUNTIME = "torch-distributed"  # the Kubeflow Trainer ClusterTrainingRuntime the TrainJob uses
MLFLOW_SECRET = "mlflow-credentials"  # the default Secret holding the MLflow credentials (optional)
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
