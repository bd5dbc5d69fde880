"""The monitor's small parts: number and duration formats, the latest-values table, the system strip (every
rank's memory), the error breakdown and a finding as text."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static

if TYPE_CHECKING:
    pass


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def fmt_num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) < 1e-3 or abs(v) >= 1e5:
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def value_of(ev: Any, key: str) -> Any:
    return ev.get(key) if isinstance(ev, dict) else getattr(ev, key, None)


class LatestTable(Widget):
    """The latest train / val values: a fixed-size text table.

    Repainting it costs one small Text (no DataTable row machinery, no re-layout), so the values
    can follow a run at several updates a second without taking the GIL from the trainer.
    ``get_cell(metric, "train" | "val")`` reads a cell (tests, tmux).
    """

    def __init__(self, rows: list[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.rows = list(rows)
        self.cells: dict[tuple[str, str], str] = {(r, c): "—" for r in rows for c in ("train", "val")}

    def get_cell(self, row: str, col: str) -> str:
        return self.cells[(row, col)]

    def update_cell(self, row: str, col: str, value: str) -> None:
        if self.cells.get((row, col)) != value:
            self.cells[(row, col)] = value
            self.refresh()

    def render(self) -> Text:
        name_w = 12
        val_w = max(8, (self.size.width - name_w) // 2)
        t = Text(no_wrap=True, overflow="crop")
        t.append(f"{'metric':<{name_w}}{'train':>{val_w}}{'val':>{val_w}}\n", style="bold")
        for i, name in enumerate(self.rows):
            t.append(f"{name:<{name_w}}", style="bold" if name.startswith("loss") or name == "mAP" else "")
            t.append(f"{self.cells[(name, 'train')]:>{val_w}}{self.cells[(name, 'val')]:>{val_w}}")
            if i < len(self.rows) - 1:
                t.append("\n")
        return t


def rank_memory(held: Any, total: float, of: str, width: int = 50) -> str:
    """The run's memory, every rank's: "GPU/rank 3.1 3.0/80 GiB" (RSS/rank in MiB on the CPU). Past what fits in
    ``width`` the ranks fold to their range and the fullest rank."""
    held = [float(m) for m in held or ()]
    if not held:
        return ""
    if of == "cuda":
        label, unit, fmt = "GPU", "GiB", lambda m: f"{m / 1024:.1f}"
        tot = f"{total / 1024:.0f}"
    else:
        label, unit, fmt = "RSS", "MiB", lambda m: f"{m:.0f}"
        tot = ""
    label = f"{label}/rank" if len(held) > 1 else f"run {label}"
    text = f"{label} {' '.join(fmt(m) for m in held)}{'/' + tot if tot else ''} {unit}"
    if len(text) > width:
        top = max(range(len(held)), key=held.__getitem__)
        text = f"{label} {fmt(min(held))}–{fmt(max(held))}{'/' + tot if tot else ''} {unit} ×{len(held)} (max r{top})"
    return text


class SystemStrip(Static):
    """CPU and RAM of this machine; every rank's memory of the shown run (from its logged steps), else this
    process's RSS and, when torch is imported and CUDA is present, the GPU's memory."""

    run_memory = ""  # rank_memory() of the shown run's last logged step

    def on_mount(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process(os.getpid())
        psutil.cpu_percent(None)
        self.sample()
        self.set_interval(2.0, self.sample)

    def show_run(self, text: str) -> None:
        if text != self.run_memory:
            self.run_memory = text
            self.sample()

    def sample(self) -> None:
        ps = self._psutil
        vm = ps.virtual_memory()
        parts = [f"CPU {ps.cpu_percent(None):3.0f}%",
                 f"RAM {vm.used / 2**30:.1f}/{vm.total / 2**30:.1f} GiB"]
        if self.run_memory:
            parts.append(self.run_memory)
        else:
            parts.append(f"RSS {self._proc.memory_info().rss / 2**20:.0f} MiB")
            torch = sys.modules.get("torch")
            gpu = "GPU —"
            try:
                if torch is not None and torch.cuda.is_available():
                    free, total = torch.cuda.mem_get_info()
                    gpu = f"GPU {(total - free) / 2**30:.1f}/{total / 2**30:.1f} GiB"
            except Exception:  # noqa: BLE001 - a broken driver must not break the UI
                gpu = "GPU ?"
            parts.append(gpu)
        self.update("  ".join(parts), layout=False)


def errors_text(errors: dict[str, Any]) -> Text:
    """The last evaluation's TIDE breakdown: what each error kind costs in AP50 and the branch the notes tune."""
    from nanxi_tune.engine.evaluation.errors import BRANCH_OF, ERROR_KINDS

    t = Text()
    t.append(f"What costs AP50 (val AP50 {errors.get('map50', 0):.3f})\n", style="bold")
    t.append(f"  {'error':<14} {'dAP50':>6} {'count':>6}  tune\n", style="dim")
    delta, counts = errors.get("delta", {}), errors.get("counts", {})
    ranked = sorted(ERROR_KINDS, key=lambda k: -delta.get(k, 0.0))
    top = delta.get(ranked[0], 0.0)
    for kind in ranked:
        d = delta.get(kind, 0.0)
        bar = "█" * min(20, round(d * 100))
        t.append(f"  {kind:<14} {d:6.3f} {counts.get(kind, 0):6d}  {BRANCH_OF[kind]:<15} {bar}\n",
                 style="bold" if d == top and d > 0.005 else "")  # the largest error(s)
    sizes = errors.get("missed_by_size") or {}
    if any(total for _m, total in sizes.values()):
        t.append("  missed by size: " + " · ".join(f"{k} {m}/{n}" for k, (m, n) in sizes.items() if n) + "\n",
                 style="dim")
    return t


def finding_detail(f: dict[str, Any]) -> Text:
    """A finding's evidence (the numbers that made it fire) and its remedy, for the detail pane."""
    t = Text()
    t.append(f"{f.get('rule', '?')}", style="bold")
    if f.get("section"):
        t.append(f"  §{f['section']}")
    t.append(f"  step {f.get('step', '?')}  [{f.get('severity', '')}]\n")
    t.append(str(f.get("message", "")) + "\n")
    ev = f.get("evidence") or {}
    if ev:
        t.append("evidence: ", style="bold")
        t.append(", ".join(f"{k} = {f'{v:.4g}' if isinstance(v, float) else v}" for k, v in ev.items()) + "\n")
    rem = f.get("remedy") or {}
    changes = rem.get("set") or {}
    t.append("remedy: ", style="bold")
    if changes:
        t.append(", ".join(f"{k} = {v}" for k, v in changes.items()), style="bold green")
        frm = rem.get("resume_from_step")
        t.append(f" — from the checkpoint at/before step {frm}" if frm is not None else " — from the last checkpoint")
        t.append("  (r applies: stop, rewind, child run)", style="dim")
    else:
        t.append(rem.get("text") or "no config change to apply", style="italic")
        return t
    if rem.get("text"):
        t.append("\n" + str(rem["text"]), style="italic")
    return t


def finding_of(step: Any, severity: str = "", rule: str = "", section: str = "", message: str = "",
               evidence: dict | None = None, remedy: dict | None = None) -> dict[str, Any]:
    if isinstance(step, dict):
        return step
    if hasattr(step, "to_json"):
        return step.to_json()
    return {"kind": "diagnosis", "step": step, "severity": severity, "rule": rule, "section": section,
            "message": message, "evidence": evidence or {}, "remedy": remedy or {}}
