"""What the trainer reads: the clip hold-out split and the endless, resumable batch stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset

from xkd.data.pretrain_dataset import EpochSampler, collate


def holdout_split(ids: list[str], fraction: float, minimum: int) -> tuple[list[str], list[str]]:
    """Deterministic (train, held-out) split by a hash of the clip id (one id per source video, so no
    source is on both sides). At least `minimum` clips are held out when fraction > 0."""
    if fraction <= 0:
        return list(ids), []
    ranked = sorted(ids, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    k = min(len(ids) - 1, max(minimum, round(fraction * len(ids))))
    held = set(ranked[:k])
    return [c for c in ids if c not in held], [c for c in ids if c in held]


def batch_stream(
    data: Dataset, sampler: EpochSampler, batch_size: int, workers: int, epoch: int, start_batch: int
) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, batch index in epoch, batch) stream from a resumable position: a checkpoint stores
    the (epoch, next batch index) and a resumed run continues with exactly the batches it would have read.
    A new DataLoader per epoch (drop_last, so every rank reads the same number of batches)."""
    while True:
        sampler.set_epoch(epoch, start=start_batch * batch_size)
        loader = DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            drop_last=True,
            num_workers=workers,
            persistent_workers=False,
        )
        for i, batch in enumerate(loader, start=start_batch):
            yield epoch, i, batch
        epoch, start_batch = epoch + 1, 0
