"""The command palette's entries (every action with its key, every config group and key) and the footer."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.widgets import Footer

from nanxi_tune.engine import config as C

# F5–F8 and Alt+D: they act on the main screen alone (on a workflow screen they would drive a run out of sight)
MAIN_RUN_ACTIONS = frozenset({"start_run", "start_detached", "pause_run", "stop_run", "resume_run"})
ACTIONS = [  # action, palette name, help
    ("start_run", "Start run", "Start a run with the config on the Config tab"),
    ("pause_run", "Pause / continue run", "Pause the run at the next step boundary, or continue it"),
    ("stop_run", "Stop run (checkpoint first)", "Write a checkpoint, then stop the run"),
    ("start_detached", "Start run detached", "Start a run as its own process: it keeps training when the TUI quits "
                                             "or SSH drops; come back with nanxi-tune open RUN"),
    ("resume_run", "Live edit / resume run", "A live run: change live keys (current values shown), applied at the next "
                                             "step. A stopped run: resume it, optionally with live edits"),
    ("load_preset", "Load preset", "Load a bundled preset, a .toml in this folder, or a path"),
    ("save_preset", "Save config as", "Save the current config as a TOML preset"),
    ("show_diff", "Diff against preset", "Show what the config changes from its preset"),
    ("open_sweep", "Seven-stars sweep (detached study)", "Sweep a numeric key (train.base_lr by default) over seven "
                                        "half-decade values from the current config; F5 there starts it detached: "
                                        "it goes on when the TUI quits (Runs tab ◆ opens it again)"),
    ("tune_post", "NMS tuning (post-processing)", "Search nms_iou / score_threshold / top_k on the selected or "
                                                  "last trained run, without retraining"),
    ("open_schedule", "Tuning schedule (rounds)", "The notes' order: round 1 QMV, round 2 RSR, after training"),
    ("run_unattended", "Run unattended (autopilot)", "The notes' whole schedule on the config's data within a budget "
                                                      "(90m, 12h, 2d), detached: rounds, journal and recipe in its "
                                                      "folder; u on the tuning schedule too"),
    ("compute_stats", "Mean/std after augmentation", "Compute normalize.mean/std over augmented training "
                                                     "samples and write them into the config"),
    ("autobatch", "Largest batch (autobatch)", "Find the largest data.batch_size that fits in memory and write "
                                               "it into the config (lr follows by linear scaling)"),
    ("apply_remedy", "Apply the selected finding's remedy", "Stop the run with a checkpoint, rewind to before "
                                                            "the evidence, change the config, start the child run (an lr remedy's "
                                                            "trials run as their own process: F7 stops them)"),
    ("dismiss_finding", "Dismiss the selected finding", "Close the selected finding without applying it; its "
                                                       "pinned rewind checkpoint is released"),
    ("show_predictions", "Predictions (val images, boxes)", "The selected or shown run's val images with ground "
                                                            "truth and predicted boxes, worst first; ←/→ move, "
                                                            "+/− the score threshold"),
    ("compare_runs", "Compare two runs", "Config diff side by side and both curves on one plot (mark runs with "
                                         "space on the Runs tab)"),
    ("next_tab", "Next tab", "Config → Monitor → Runs"),
    ("quit", "Quit", "Quit (asks first while a run is in progress)"),
]
TIP = {a: h for a, _n, h in ACTIONS}


class EntryProvider(Provider):
    """A palette provider from a list of (name, callback, help) entries."""

    def _entries(self) -> list[tuple[str, Callable, str]]:
        raise NotImplementedError

    async def discover(self) -> Hits:
        for name, fn, help_ in self._entries():
            yield DiscoveryHit(name, fn, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, fn, help_ in self._entries():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), fn, help=help_)


def key_label(b: Binding) -> str:
    """A binding's key as the palette shows it: its key_display, else ^N, Alt+B, Esc, F5."""
    if b.key_display:
        return b.key_display
    *mods, key = b.key.split("+")
    if key == "escape":
        key = "Esc"
    elif len(key) > 1:
        key = key.capitalize()  # f9 → F9, enter → Enter
    elif mods:
        key = key.upper()  # ctrl+n → ^N; a bare letter stays as its binding types it
    return "".join({"ctrl": "^", "alt": "Alt+", "shift": "Shift+"}.get(m, m + "+") for m in mods) + key


def entry_name(name: str, b: Binding) -> str:
    # the key in parentheses: the palette reads a name as markup, where "[F5]" is a style tag and vanishes
    return f"{name}  ({key_label(b)})"


class RunCommands(EntryProvider):
    """The run and preset actions in the command palette (Ctrl+P)."""

    def _entries(self) -> list[tuple[str, Callable, str]]:
        keys = {b.action: b for b in type(self.app).BINDINGS if isinstance(b, Binding)}
        over_workflow = self.screen is not self.app.screen_stack[0]  # the run keys are the main screen's alone
        out = [(entry_name(name, keys[action]) if action in keys else name, partial(self.app.run_action, action),
                help_) for action, name, help_ in ACTIONS if not (over_workflow and action in MAIN_RUN_ACTIONS)]
        from nanxi_tune.tui.field_row import all_keys, group_title

        for group in C.GROUPS:
            out.append((f"Config group: {group}", partial(self.app.show_config_group, group), group_title(group)))
        for key in all_keys():  # every cheat-sheet key: "lr" finds train.base_lr
            info = C.field_info(key)
            zh = (info.json_schema_extra or {}).get("zh") or ""
            out.append((f"Edit {key}" + (f"  {zh}" if zh else ""), partial(self.app.edit_key, key),
                        info.description or ""))
        return out


class ScreenCommands(EntryProvider):
    """A pushed screen's own keys in the command palette (the autopilot's pause, budget, journal…): only those
    that can act now (the screen's check_action), each with its key and tooltip."""

    def _entries(self) -> list[tuple[str, Callable, str]]:
        screen = self.screen
        if screen is self.app.screen_stack[0]:
            return []  # the main screen's keys are the app's, in RunCommands
        out = []
        for b in type(screen).BINDINGS:
            if not isinstance(b, Binding) or screen.check_action(b.action, ()) is False:
                continue
            out.append((entry_name(b.description, b), partial(screen.run_action, b.action), b.tooltip or ""))
        return out


class SteadyFooter(Footer):
    """Textual's Footer, recomposed only when the keys it shows change.

    The stock Footer rebuilds itself (and restyles every key) on each focus change; with the
    Config tab's few hundred widgets that made every tab switch ~0.3 s slower under load. The
    main screen's shown bindings are the same everywhere, so after the first compose it stays put.
    """

    _shown: tuple | None = None

    def bindings_changed(self, screen: Any) -> None:
        try:
            shown = tuple((b.key, b.action, b.description, enabled)
                          for (_n, b, enabled, _t) in screen.active_bindings.values() if b.show)
        except Exception:  # noqa: BLE001 - fall back to the stock behaviour
            shown = None
        if shown is not None and shown == self._shown and self._bindings_ready:
            return
        self._shown = shown
        super().bindings_changed(screen)
