"""Process-group and precision plumbing for pretraining: one process, or `torchrun` (env:// rendezvous)."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from xkd.train.config import PretrainConfig


class Distributed:
    """This process's place in the job (world size, rank, device), read from the torchrun environment;
    joins the process group (NCCL on CUDA, gloo on CPU) when there is more than one process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if self.world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks, in place (identity with one process)."""
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def replicas_agree(self, net: torch.nn.Module) -> bool:
        """Every rank holds the same weights and buffers (DINO centres included): compare per-tensor
        float64 sums across ranks. Catches a desynchronised replica the step it happens."""
        if self.world == 1:
            return True
        sums = torch.stack([t.detach().double().sum() for t in net.state_dict().values()]).to(self.device)
        gathered = [torch.empty_like(sums) for _ in range(self.world)]
        dist.all_gather(gathered, sums)
        return all(torch.equal(gathered[0], g) for g in gathered[1:])


def autocast_and_scaler(cfg: PretrainConfig, device: torch.device):
    """(autocast context factory, GradScaler or None, resolved precision name) for `cfg.train.precision`;
    "auto" is the model's AMP dtype on CUDA and fp32 on CPU. Only fp16 needs a loss scaler."""
    p = cfg.train.precision
    if p == "auto":
        p = {"float16": "fp16", "bfloat16": "bf16"}[cfg.model.amp_dtype] if device.type == "cuda" else "fp32"
    if p == "fp32":
        return contextlib.nullcontext, None, p
    dtype = torch.float16 if p == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if p == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler, p
