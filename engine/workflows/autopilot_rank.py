"""How an autopilot round's trials rank: which row is the best (a trial too short to rank is not), each capacity
arm's step time against the recipe's (its trials run for equal time), and the journal's words on the trials that were
cut half-way or trained too few steps."""

from __future__ import annotations

import time
from typing import Any, Callable

from .. import config as C
from . import autopilot_plan as P
from .study_prune import PRUNE_RATIO


def step_ratios(cfg: C.Config, arms: list[dict[str, Any]], steps: int = 2) -> dict[str, float]:
    """Each arm's training-step time over the first arm's, measured on the same real batch (a warm-up step, then
    ``steps``) — the capacity round's trials run for equal time, so a slower arm trains fewer steps."""
    import torch

    from ..run.device import pick_device
    from .autobatch import ProbeStep

    device = pick_device(cfg.train.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {}
    for arm in arms:
        step = ProbeStep(C.with_updates(cfg, arm["set"], "autopilot capacity arm"), device)
        step(cfg.data.batch_size)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            step(cfg.data.batch_size)
        sync()
        times[arm["name"]] = (time.perf_counter() - t) / steps
    first = times[arms[0]["name"]]
    return {name: round(t / first, 3) for name, t in times.items()}


def pruned_text(rows: list[dict[str, Any]]) -> str:
    """The journal's word on a round's trials cut half-way ("" when none was)."""
    cut = [str(x["label"]) for x in rows if x.get("status") == "pruned"]
    return (f"; {', '.join(cut)} cut half-way (below {PRUNE_RATIO:g} × the best at the same step, it could not "
            "become the best): its time goes to the final run") if cut else ""


def choose(rows: list[dict[str, Any]], too_short: Callable[[dict[str, Any]], bool],
           keep: Any = None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A round's best row and its finished rows too short to rank. The study's best, unless it is too short: then
    the best of the rest; when none is left, the row of the recipe's own value ``keep`` (None: no best)."""
    best = next((x for x in rows if x["best"]), None)
    short = too_short_rows(rows, too_short)
    if best in short:  # the host ran slower than the probe: a trial of a few steps ranks nothing
        best = max((x for x in rows if x["status"] == "finished" and x not in short), key=lambda x: x["mAP"],
                   default=None)
        if best is None and keep is not None:  # nothing ranks: the recipe's own value, not a guess
            best = next((x for x in rows if x["value"] == keep and x["status"] == "finished"), None)
    return best, short


def too_short_rows(rows: list[dict[str, Any]], too_short: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The finished trials too short to rank (cut or failed ones are said apart)."""
    return [x for x in rows if x["status"] == "finished" and too_short(x)]


def short_text(rows: list[dict[str, Any]]) -> str:
    """The journal's word on a round's trials too short to rank ("" when none was)."""
    said = [f"{x['label']} trained {x['steps']} steps" for x in rows]
    return (f"; {', '.join(said)} (fewer than {P.MIN_TRIAL_STEPS} cannot rank: the machine ran slower than the probe "
            "measured): not ranked") if said else ""
