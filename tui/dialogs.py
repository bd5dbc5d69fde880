"""Modal dialogs: preset picker, save as, diff, live edits (of a running run or before a resume), confirm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from nanxi_tune.engine import config as C
from nanxi_tune.tui.field_row import OrderedInput


class Dialog(ModalScreen):
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel", id="cancel", tooltip="Close without doing anything")]

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def preset_choices(cwd: Path | None = None) -> list[tuple[str, str]]:
    """(label, name-or-path) for the bundled presets and *.toml files in the working folder."""
    out = [(f"{name}  (bundled)", name) for name in C.preset_names()]
    folder = cwd or Path.cwd()
    for p in sorted(folder.glob("*.toml")):
        if p.name in ("pyproject.toml",):
            continue
        out.append((f"{p.name}  ({folder})", str(p)))
    return out


class PresetPicker(Dialog):
    """Pick a bundled preset or a .toml in the working folder, or type a path."""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Load preset — Enter picks; or type a path below", classes="dialog-title")
            yield OptionList(*[Option(label, id=value) for label, value in preset_choices()], id="preset-list")
            yield OrderedInput(placeholder="name or path/to/preset.toml, then Enter", id="preset-path")
            yield Static("", id="preset-error", classes="dialog-error")

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self._try(event.option.id or "")

    @on(Input.Submitted, "#preset-path")
    def _typed(self, event: Input.Submitted) -> None:
        self._try(event.value.strip())

    def _try(self, value: str) -> None:
        if not value:
            return
        try:
            C.resolve_preset(value)
            if not Path(C.resolve_preset(value)).exists():
                raise C.ConfigError([("file", value, "no such file")])
        except C.ConfigError as err:
            self.query_one("#preset-error", Static).update(Text(str(err)))
            return
        self.dismiss(value)


class SaveAs(Dialog):
    def __init__(self, default: str) -> None:
        super().__init__()
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Save config as (TOML path), Enter to save, Esc to cancel", classes="dialog-title")
            yield OrderedInput(self.default, id="save-path")
            yield Static("", id="save-error", classes="dialog-error")

    @on(Input.Submitted, "#save-path")
    def _submit(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if not value:
            self.query_one("#save-error", Static).update("give a file path, e.g. my-preset.toml")
            return
        if not value.endswith(".toml"):
            value += ".toml"
        self.dismiss(value)


def diff_table(cfg: C.Config | None, base: C.Config | None, invalid: dict[str, str] | None = None) -> Any:
    if base is None:
        return Text("No preset to compare with (the config's preset cannot be loaded).")
    if cfg is None:
        return Text("The config is invalid: " + "; ".join(f"{k}: {m}" for k, m in (invalid or {}).items()))
    d = C.diff(base, cfg)
    if not d:
        return Text(f"No changes from preset {cfg.preset!r}.")
    t = Table(title=f"changes from preset {cfg.preset!r}", expand=True)
    t.add_column("key")
    t.add_column("preset")
    t.add_column("current", style="bold")
    t.add_column("live", justify="center")
    for key, (a, b) in d.items():
        t.add_row(key, str(a), str(b), "⟳" if C.is_live(key) else "")
    return t


class DiffView(Dialog):
    def __init__(self, renderable: Any) -> None:
        super().__init__()
        self.renderable = renderable

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Config vs preset — Esc closes", classes="dialog-title")
            with VerticalScroll(id="diff-scroll"):
                yield Static(self.renderable, id="diff-body")
            yield Button("Close", id="diff-close")

    @on(Button.Pressed, "#diff-close")
    def _close(self) -> None:
        self.dismiss(None)


class LiveEditDialog(Dialog):
    """Live keys of a run, each with its current value: changes typed as key=value. ``live``: the run trains now
    (Enter applies the changes at its next step); else Enter resumes it with them."""

    def __init__(self, run_dir: Path, current: C.Config, prefill: str, live: bool) -> None:
        super().__init__()
        self.run_dir, self.current, self.prefill, self.live = run_dir, current, prefill, live

    def compose(self) -> ComposeResult:
        # the input comes first: at 80×24 the ~50 live keys below it would push it off-screen
        verb = "change live keys of the running" if self.live else "resume from its last checkpoint:"
        with Vertical(classes="dialog"):
            yield Label(f"{self.run_dir.name} — {verb} run" if self.live else f"Resume {self.run_dir.name} from its "
                        "last checkpoint", classes="dialog-title")
            yield Label("Changes as key=value, space-separated" + ("" if self.live else " (empty = as it was)") + ":")
            yield OrderedInput(self.prefill, id="live-updates")
            yield Static("", id="live-error", classes="dialog-error")
            yield Label(("Enter applies at the next step" if self.live else "Enter resumes") + " · Esc cancels",
                        classes="dialog-help")
            with VerticalScroll(id="live-keys"):
                yield Static(self._current_values(), classes="dialog-help")

    def _current_values(self) -> Text:
        t = Text()
        for key, value in C.flatten(self.current).items():
            if C.is_live(key):
                zh = ((C.field_info(key).json_schema_extra or {}).get("zh") or "").split(":")[-1].strip()
                t.append(f"{key} = ", style="bold")
                t.append(f"{value}" + (f"  {zh}" if zh else "") + "\n")
        return t

    @on(Input.Submitted, "#live-updates")
    def _submit(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        try:  # the values themselves, against the run's own config, before anything is sent or started
            updates = C.parse_sets(text.split()) if text else {}
            C.with_live_updates(self.current, updates, "live edit")
        except C.ConfigError as err:
            self.query_one("#live-error", Static).update(Text(str(err)))
            return
        if self.live and not updates:
            self.query_one("#live-error", Static).update("type at least one key=value, or Esc")
            return
        self.dismiss(updates)


class Confirm(Dialog):
    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    BINDINGS = [Binding("y", "yes", "Yes", id="yes", tooltip="Yes"),
                Binding("n,escape", "no", "No", id="no", tooltip="No")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            yield Button("Yes (y)", id="yes", variant="error")
            yield Button("No (n / Esc)", id="no")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")
