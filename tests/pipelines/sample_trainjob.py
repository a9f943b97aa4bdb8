"""The TrainJob the launcher tests start from: 2 nodes x 8 GPUs with a volume, MLflow, a node selector and
tolerations, so every optional part of the object is present."""

from __future__ import annotations

from pipelines import trainjob


def sample_job(name: str = "xkd-pretrain-x", **kw) -> dict:
    args = trainjob.pretrain_args("configs/pretrain/tiny.yaml", "/data/c", "/data/s", "/data/o", 24)
    defaults = dict(
        nodes=2,
        gpus_per_node=8,
        pvc_name="xkd-data",
        tracking_uri="http://mlflow:5000",
        node_selector={"gpu": "h100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        namespace="team",
    )
    return trainjob.build(name, "registry.example.org/xkd:0.1.0", args, **{**defaults, **kw})
