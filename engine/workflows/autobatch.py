"""Batch size as large as possible (Batchsize调整的尽量大, §10): the largest data.batch_size that fits.

- CUDA ("cuda-probe"): real training steps (forward, backward, AdamW step) at growing batch sizes —
  doubling until one runs out of memory (torch.OutOfMemoryError) or passes ``fill`` of the device,
  then bisecting between the last that fit and the first that did not.
- CPU ("cpu-estimate"): one training step's autograd saved tensors (the activations backward needs)
  are measured at two small batches; their slope is the memory per image. The largest batch whose
  estimate — per image × batch × ``overhead`` (backward's temporaries) + the batch-independent part
  (weights, gradients, AdamW moments) — stays under the cap (default 50% of available RAM) wins.
  The process RSS growth over the measured step is reported beside it as a cross-check.

The lr follows by the linear scaling rule: lr = base_lr × batch_size / base_batch_size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .. import config as C

Progress = Callable[[str], None]
MAX_BATCH = 4096


@dataclass
class AutoBatch:
    batch_size: int
    lr: float  # the linearly scaled lr at that batch
    base_lr: float
    method: str  # "cuda-probe" or "cpu-estimate"
    device: str
    cap_bytes: int
    per_image_bytes: float | None = None
    fixed_bytes: float | None = None
    limited_by: str = "memory"  # memory, dataset (the batch cannot exceed the training set), max
    probes: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def search(fits: Callable[[int], bool], start: int = 1, limit: int = MAX_BATCH) -> int:
    """The largest batch in [1, limit] with ``fits(batch)``, assuming fits is monotone: double from ``start``
    while it fits, then bisect. 0 when not even batch 1 fits."""
    b = max(1, min(start, limit))
    hi = None
    while not fits(b):  # shrink until one fits
        hi = b
        if b == 1:
            return 0
        b = max(1, b // 2)
    lo = b
    if hi is None:  # grow by doubling until one does not fit
        while lo < limit:
            b = min(lo * 2, limit)
            if not fits(b):
                hi = b
                break
            lo = b
        if hi is None:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _sample_batch(ds, n: int):
    import torch

    from ..data.loader import collate

    base = [ds[(0, i % len(ds))] for i in range(min(n, len(ds)))]
    items = [base[i % len(base)] for i in range(n)]
    return collate(items) if items else (torch.zeros(0), [])


class ProbeStep:
    """One real training step (model + AdamW) at any batch size, data reused from a few real samples."""

    def __init__(self, cfg: C.Config, device):
        import torch

        from ..data.dataset import train_dataset
        from ..model.detector import build_model
        from ..run.device import memory_format
        from ..train.optim import param_groups

        from ..data.profile import resolve_for_training

        cfg = resolve_for_training(cfg)[0]  # the stride the run will choose
        self.cfg, self.device = cfg, device
        self.ds = train_dataset(cfg, cfg.train.seed)
        self.layout = memory_format(cfg.train.channels_last)
        self.model = build_model(cfg, self.ds.num_classes).to(device, memory_format=self.layout)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.train.weight_decay), lr=cfg.lr)
        self.pool = _sample_batch(self.ds, 8)

    def batch(self, n: int):
        images, targets = self.pool
        idx = [i % images.shape[0] for i in range(n)]
        return images[idx].to(self.device, memory_format=self.layout), [targets[i] for i in idx]

    def __call__(self, n: int, pack_hook=None) -> None:
        import torch

        from ..model.targets import build_targets

        images, targets = self.batch(n)
        t = build_targets(targets, self.model.num_classes, self.cfg, self.device)
        if pack_hook is None:
            losses = self.model(images, t)
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda x: x):
                losses = self.model(images, t)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.opt.step()


def _saved_bytes(step: ProbeStep, n: int) -> int:
    """Bytes of distinct storages autograd saves for backward in one step at batch ``n``."""
    seen: dict[tuple[int, str], int] = {}
    params = {p.untyped_storage().data_ptr() for p in step.model.parameters()}

    def pack(t):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in params:
                seen[(ptr, str(t.device))] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    step(n, pack)
    return sum(seen.values())


def available_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def find_batch(cfg: C.Config, cap_gb: float | None = None, cap_fraction: float = 0.5, device: str | None = None,
               overhead: float = 1.5, fill: float = 0.9, limit: int = MAX_BATCH,
               progress: Progress | None = None) -> AutoBatch:
    """The largest data.batch_size that fits (see the module doc); ``cap_gb`` overrides the memory cap."""
    import torch

    from ..run.device import pick_device

    say = progress or (lambda _m: None)
    dev = pick_device(device or cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    step = ProbeStep(cfg, dev)
    limit = min(limit, len(step.ds))  # a run needs at least one full batch per epoch
    probes: list[dict[str, Any]] = []

    def scaled(bs: int) -> float:
        return C.linear_lr(cfg.train.base_lr, bs, cfg.train.base_batch_size)

    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        cap = int(cap_gb * 2**30) if cap_gb else int(total * fill)

        def fits(n: int) -> bool:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            try:
                step(n)
                torch.cuda.synchronize(dev)
                peak = torch.cuda.max_memory_reserved(dev)
                ok = peak <= cap
                probes.append({"batch": n, "fits": ok, "peak_bytes": int(peak)})
            except torch.OutOfMemoryError:
                ok = False
                probes.append({"batch": n, "fits": False, "peak_bytes": None, "oom": True})
            step.opt.zero_grad(set_to_none=True)
            say(f"batch {n}: {'fits' if ok else 'out of memory'}")
            return ok

        bs = search(fits, cfg.data.batch_size, limit)
        torch.cuda.empty_cache()
        detail = (f"probed real forward/backward/AdamW steps on {dev} (doubling, then bisect); cap "
                  f"{cap / 2**30:.2f} GiB of {total / 2**30:.2f} GiB")
        by = "dataset" if bs == limit and limit == len(step.ds) else ("max" if bs == limit else "memory")
        return AutoBatch(max(bs, 1), scaled(max(bs, 1)), cfg.train.base_lr, "cuda-probe", str(dev), cap,
                         limited_by=by, probes=probes, detail=detail)

    # CPU: estimate from measured saved-activation bytes at two small batches
    import psutil

    proc = psutil.Process()
    cap = int(cap_gb * 2**30) if cap_gb else int(available_ram() * cap_fraction)
    b1, b2 = 2, 4
    step(b1)  # warm up: allocator, AdamW moments
    rss0 = proc.memory_info().rss
    s1 = _saved_bytes(step, b1)
    s2 = _saved_bytes(step, b2)
    rss_delta = proc.memory_info().rss - rss0
    per_image = max((s2 - s1) / (b2 - b1), 1.0) * overhead
    n_params = sum(p.numel() * p.element_size() for p in step.model.parameters())
    image_bytes = 3 * cfg.preprocess.input_size ** 2 * 4
    per_image += image_bytes
    fixed = 4 * n_params + max(s1 - (s2 - s1) / (b2 - b1) * b1, 0)  # weights, grads, 2 AdamW moments, offset
    probes = [{"batch": b1, "saved_bytes": s1}, {"batch": b2, "saved_bytes": s2},
              {"rss_growth_bytes": int(rss_delta)}]
    bs = int((cap - fixed) // per_image) if cap > fixed else 0
    by = "memory"
    if bs >= limit:
        bs, by = limit, ("dataset" if limit == len(step.ds) else "max")
    bs = max(bs, 1)
    say(f"{per_image / 2**20:.2f} MiB per image → batch {bs}")
    detail = (f"CPU estimate: autograd saved tensors at batch {b1} and {b2} give {per_image / 2**20:.2f} MiB per "
              f"image (× {overhead:g} for backward's temporaries, input included) + {fixed / 2**20:.1f} MiB fixed "
              f"(weights, gradients, AdamW moments), against a cap of {cap / 2**30:.2f} GiB "
              f"({'--cap-gb' if cap_gb else f'{cap_fraction:.0%} of available RAM'}); the process RSS grew "
              f"{rss_delta / 2**20:.1f} MiB over the measured steps")
    return AutoBatch(bs, scaled(bs), cfg.train.base_lr, "cpu-estimate", str(dev), cap, per_image, fixed, by,
                     probes, detail)


def apply(cfg: C.Config, result: AutoBatch) -> C.Config:
    """``cfg`` with data.batch_size set (lr follows from base_lr by linear scaling)."""
    return C.with_updates(cfg, {"data.batch_size": result.batch_size}, "autobatch")
