"""Batches and their order: collate, the epoch sampler (order from (seed, epoch) only, so a resume needs only
(epoch, start) and ranks take disjoint shards), eval shards, loader workers, and the skipped-image warnings a
batch carries."""

from __future__ import annotations

import hashlib
import os
import struct

import torch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that mixes (seed, epoch, index); stable across processes and platforms."""
    digest = hashlib.blake2b(struct.pack("<qqq", seed, epoch, index), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def collate(batch) -> tuple[torch.Tensor, list[dict]]:
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def epoch_seed(seed: int, epoch: int) -> int:
    return sample_seed(seed, epoch, -1)


class EpochSampler(torch.utils.data.Sampler):
    """(epoch, index) keys in the epoch's order (from (seed, epoch) only), skipping the first ``start``.

    Data-parallel (``world`` > 1): the order is cut into global batches of ``batch`` × ``world`` (only whole ones)
    and rank ``rank`` takes the ``rank``-th ``batch`` of each, so one step of N ranks sees the samples one process
    sees with N× the batch. ``start`` counts global samples."""

    def __init__(self, n: int, seed: int, epoch: int = 0, start: int = 0, shuffle: bool = True,
                 rank: int = 0, world: int = 1, batch: int = 1, augment: bool = True):
        if not 0 <= start <= n:
            raise ValueError(f"start must be between 0 and n = {n}, got {start}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be between 0 and world - 1 = {world - 1}, got {rank}")
        self.n, self.seed, self.epoch, self.start, self.shuffle = n, seed, epoch, start, shuffle
        self.rank, self.world, self.batch = rank, world, batch
        self.augment = augment  # False: plain indices, which the dataset reads without augmentation

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        rest = self.order()[self.start:]
        if self.world == 1:
            return rest
        g = self.batch * self.world
        return [i for k in range(len(rest) // g) for i in rest[k * g + self.rank * self.batch:][:self.batch]]

    def __iter__(self):
        epoch = self.epoch
        return iter([(epoch, i) if self.augment else i for i in self._indices()])

    def __len__(self) -> int:
        if self.world == 1:
            return self.n - self.start
        return (self.n - self.start) // (self.batch * self.world) * self.batch


def eval_indices(n: int, batch: int, rank: int = 0, world: int = 1) -> list[int]:
    """Evaluation split across ranks: rank r takes the global batches k with k % world == r (the last, partial
    batch included), so its loader batches exactly as one process would."""
    return [i for k in range(rank, -(-n // batch), world) for i in range(k * batch, min(n, (k + 1) * batch))]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(workers: int | str, device_type: str, cores: int | None = None) -> int:
    """data.workers = auto: on a GPU all cores but the training thread's (at most 8); on a CPU the model's
    threads use every core, so workers only pay from 4 cores on, and then a quarter of them."""
    if workers != "auto":
        return int(workers)
    cores = cores or cpu_cores()
    if device_type == "cuda":
        return max(0, min(8, cores - 1))
    return cores // 4


def make_loader(dataset, sampler, batch_size: int, workers: int | str, device_type: str,
                drop_last: bool) -> torch.utils.data.DataLoader:
    workers = resolve_workers(workers, device_type)
    if workers and getattr(dataset, "cache_limit", 0):
        dataset.preload()
    # its own generator, seeded from the sampler's (seed, epoch): an iterator draws its workers' base seed from
    # it, never from the global torch generator whose state a checkpoint records
    g = torch.Generator()
    g.manual_seed(sample_seed(sampler.seed, sampler.epoch, -3) if isinstance(sampler, EpochSampler) else 0)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       collate_fn=collate, pin_memory=device_type == "cuda",
                                       drop_last=drop_last, persistent_workers=False, generator=g)


def first_skips(targets: list[dict], seen: set[str]) -> list[str]:
    """data.skip_bad: a warning with the running count for each bad image in ``targets`` met for the first time
    (``seen`` remembers them)."""
    out = []
    for t in targets:
        for msg in t.get("skipped", ()):
            if msg not in seen:
                seen.add(msg)
                out.append(f"data.skip_bad: skipped {len(seen)} bad image(s) so far; latest: {msg}")
    return out
