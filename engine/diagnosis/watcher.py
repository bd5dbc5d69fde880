"""The watcher: the notes' rules (engine.diagnosis.rules) run over a growing history, each finding reported once.

Live: ``Watcher(cfg)``; the trainer calls ``observe(line)`` for every metrics line and ``check(stats)`` at each
eval (and every ``diagnose.check_every`` lines). Offline: ``diagnose_run(run_dir)`` replays a run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import config as C
from ..run import rundir
from .rulebook import SEVERITY_RANK, Finding, History, finite
from .rules import RULES


class Watcher:
    """Runs every rule over a growing history; reports each finding once.

    Dedupe: a rule already reported stays quiet until (a) its key evidence number (the rule table's
    ``key``) changed by more than ``diagnose.refire_change`` relative to what was last reported (it
    then repeats the proposal it made unless the new one differs materially: never a drifting series),
    (b) its remedy changed materially (``material_change``: e.g. the lr was lowered and the loss is still
    flat: the new finding proposes the next grid value), or (c) its severity rose. Lines are O(1) to observe; a check
    reads only bounded windows, per-epoch summaries and the evals.
    """

    def __init__(self, cfg: C.Config):
        self.cfg = cfg
        self.history = History.for_config(cfg)
        self.reported: dict[str, Finding] = {}

    def set_config(self, cfg: C.Config) -> None:
        """Live keys changed (e.g. train.base_lr after a remedy): later findings use the new config."""
        self.cfg = cfg

    def remember(self, event: dict[str, Any]) -> None:
        """A finding already reported (a diagnosis line of events.jsonl, before a resume): not reported again
        unless it changes as ``check`` says."""
        fields = ("rule", "severity", "section", "message", "evidence", "remedy", "step")
        if event.get("kind") == "diagnosis" and all(k in event for k in fields):
            self.reported[event["rule"]] = Finding(**{k: event[k] for k in fields})

    def observe(self, line: dict[str, Any]) -> None:
        """One metrics line (or an events line: a non-finite error is noted, others ignored)."""
        self.history.add(line)

    def check(self, stats: dict[str, Any] | None = None) -> list[Finding]:
        """New or materially changed findings since the last check."""
        if not self.cfg.diagnose.enabled:
            return []
        out = []
        for f in run_rules(self.cfg, self.history, stats):
            if self._is_new(f):
                self.reported[f.rule] = f
                out.append(f)
        return out

    def _is_new(self, f: Finding) -> bool:
        old = self.reported.get(f.rule)
        if old is None:
            return True
        tol = self.cfg.diagnose.refire_change
        if SEVERITY_RANK[f.severity] > SEVERITY_RANK[old.severity]:
            return True
        if material_change(old.remedy.get("set") or {}, f.remedy.get("set") or {}, tol):
            return True
        key = RULES[f.rule].key
        if key is None:
            return False
        a, b = old.evidence.get(key), f.evidence.get(key)
        changed = a != b if not (finite(a) and finite(b)) else abs(b - a) > tol * max(abs(a), 1e-12)
        if changed and f.remedy.get("set") != old.remedy.get("set"):  # the same proposal again, not a drifted one
            f.remedy.update({k: v for k, v in old.remedy.items() if k in ("set", "text")})
        return changed


def material_change(a: dict[str, Any], b: dict[str, Any], tol: float) -> bool:
    """Two remedies' ``set`` differ materially: other keys, another value of a non-numeric key, or a number
    (a list's first number) more than ``tol`` apart relative to the first. 0.01 → 0.003 is material; a clip of
    170 → 160 → 150, or a decay point sliding 0.6 → 0.7 as the run advances, is the same proposal drifting."""
    if set(a) != set(b):
        return True
    for k, x in a.items():
        y = b[k]
        if isinstance(x, list) and isinstance(y, list) and x and y:
            x, y = x[0], y[0]
        if finite(x) and finite(y):
            if abs(y - x) > tol * max(abs(x), 1e-12):
                return True
        elif x != y:
            return True
    return False


def run_rules(cfg: C.Config, history: "History | list[dict[str, Any]]", stats: dict[str, Any] | None = None
              ) -> list[Finding]:
    """Every rule once, in the table's order; no dedupe."""
    h = History.of(history, cfg)
    out = []
    for rule in RULES.values():
        f = rule.fn(cfg, h, stats)
        if f is not None:
            out.append(f)
    return out


def diagnose_run(run_dir: str | Path, cfg: C.Config | None = None) -> list[Finding]:
    """Replay a run directory as the live watcher would see it: checks at every eval, every
    ``diagnose.check_every`` train lines and at the end. Returns every finding reported, in order."""
    run_dir = Path(run_dir)
    cfg = cfg or C.load(run_dir / rundir.CONFIG)
    w = Watcher(cfg)
    every = cfg.diagnose.check_every
    found: list[Finding] = []
    errors = [e for e in rundir.read_events(run_dir) if e.get("kind") == "error"]
    n = 0
    for line in rundir.read_metrics(run_dir):
        w.observe(line)
        if line.get("split") == "val":
            found += w.check()
        elif line.get("split") == "train":
            n += 1
            if every and n % every == 0:
                found += w.check()
    for e in errors:
        w.observe(e)
    found += w.check()
    return found


__all__ = ["Watcher", "diagnose_run", "run_rules", "material_change"]
