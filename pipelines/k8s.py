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

# The Trainer's webhook (v2.2+) refuses a runtime patch whose manager is not a domain-prefixed path ("acme.io/foo").
RUNTIME_PATCH_MANAGER = "xkd.dev/xkd-pipeline"
# The image's user and group (the Dockerfile's `useradd --uid` and `USER` must say the same): the TrainJob pods run
# as them with fsGroup set, so the kubelet makes the PVC group-writable; KFP pods run as them too.
IMAGE_UID = 10001
IMAGE_GID = 10001
