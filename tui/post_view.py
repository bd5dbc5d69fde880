"""NMS after training: the post-processing search on a trained run, as a standalone Screen.

``app.push_screen(TunePostScreen(run_dir))``: F5 runs the best checkpoint once over the val data and
decodes the grid nms_iou × score_threshold × top_k from the cached outputs; the table shows the best
rows and the run's own values; F8 / a writes the best into the run's config.toml (or ``target``) and
posts ``ConfigApplied``. Torch loads only in the worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, ProgressBar, Static

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.tui.sweep_view import ConfigApplied


class TunePostScreen(Screen):
    BINDINGS = [
        Binding("f5", "tune", "Search", tooltip="Run the network once, then search the post-processing grid"),
        Binding("f8", "apply", "Apply best", tooltip="Write the best values into the run's config"),
        Binding("a", "apply", "Apply best", show=False),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, run_dir: Path | str, target: Path | str | None = None, top: int = 12,
                 autostart: bool = False) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.target = Path(target) if target else None
        self.top = top
        self.autostart = autostart
        self.result = None
        self.phase = "idle"

    def compose(self) -> ComposeResult:
        yield Label(f"[b]后处理 post-processing after training[/b] — {self.run_dir.name}: nms_iou × score_threshold "
                    "× top_k on fixed weights (the network runs once)")
        yield ProgressBar(id="post-progress", show_eta=False)
        yield DataTable(id="post-table", cursor_type="row", zebra_stripes=True)
        yield Static("F5 searches.", id="post-status")
        yield Footer(compact=True)  # 80 columns: the screen's keys and ^p fit

    def on_mount(self) -> None:
        self.query_one("#post-table", DataTable).add_columns("nms_iou", "score_threshold", "top_k", "mAP", "AP50",
                                                             "detections", "")
        if not (self.run_dir / rundir.CONFIG).exists():
            self._status(f"[red]{self.run_dir}: not a run directory")
        elif self.autostart:
            self.action_tune()

    def action_tune(self) -> None:
        if self.phase == "running":
            return
        self.phase = "running"
        self._status("running the best checkpoint over the val data…")
        self.run_worker(self._work, thread=True, exclusive=True, group="tune-post", exit_on_error=False)

    def _work(self) -> None:
        from nanxi_tune.engine.workflows import tune_post as TP

        try:
            cache = TP.cache_outputs(self.run_dir)
            self.app.call_from_thread(self._status, f"cached {len(cache.img_ids)} images' head outputs in "
                                      f"{cache.seconds:.1f}s; searching…")
            res = TP.tune(self.run_dir, cache=cache,
                          progress=lambda d, n: self.app.call_from_thread(self._progress, d, n))
            TP.record(res)
            self.result = res
            self.phase = "done"
            self.app.call_from_thread(self._show)
        except Exception as err:  # noqa: BLE001 - show it, keep the UI alive
            self.phase = "failed"
            try:
                self.app.call_from_thread(self._status, f"[red]{type(err).__name__}: {err}")
            except Exception:  # noqa: BLE001
                pass

    def _progress(self, done: int, total: int) -> None:
        self.query_one("#post-progress", ProgressBar).update(total=total, progress=done)

    def _show(self) -> None:
        from nanxi_tune.engine.workflows.tune_post import fmt_choices, fmt_point

        res = self.result
        table = self.query_one("#post-table", DataTable)
        table.clear()
        rows = sorted(res.rows, key=lambda r: (-r["mAP"], -r["AP50"]))[: self.top]
        if res.default not in rows:
            rows.append(res.default)
        for r in rows:
            tag = "★ best" if r is res.best else ("defaults" if r["default"] else "")
            table.add_row(f"{r['postprocess.nms_iou']:g}", f"{r['postprocess.score_threshold']:g}",
                          str(r["postprocess.top_k"]), f"{r['mAP']:.4f}", f"{r['AP50']:.4f}", str(r["detections"]),
                          tag)
        self._status(f"best {fmt_point(res.best)}: mAP {res.best['mAP']:.4f} vs defaults "
                     f"{res.default['mAP']:.4f} ({len(res.rows)} points) — F8 applies"
                     + (f"\n{fmt_choices(res)}" if fmt_choices(res) else ""))

    def action_apply(self) -> None:
        from nanxi_tune.engine.workflows import tune_post as TP

        if self.result is None:
            self.notify("search first (F5)", severity="warning")
            return
        path = TP.apply(self.result, self.target)
        updates: dict[str, Any] = self.result.best_updates()
        self.post_message(ConfigApplied(C.load(path), f"tune-post {self.run_dir.name}", updates))
        self.notify(f"post-processing written to {path}")
        self._status(f"applied to {path}: " + ", ".join(f"{k} = {v}" for k, v in updates.items()))

    def action_close(self) -> None:
        self.dismiss(self.result)

    def _status(self, text: str) -> None:
        self.query_one("#post-status", Static).update(text)
