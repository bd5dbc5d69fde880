"""The cheat-sheet (超参数速查表) as editable panels, generated from the pydantic schema.

No per-field UI code: every field of every group in ``config.GROUPS`` gets a row whose
editor is chosen from the field's type (Literal → Select, bool → Switch, anything else →
Input parsed TOML-style by ``config.parse_value``). Each edit re-validates the whole config
with ``config.with_updates``; pydantic's message appears inline under the field, naming the key.
"""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.lazy import Lazy
from textual.message import Message
from textual.widgets import Input, Select, Static, Switch

from nanxi_tune.engine import config as C
from nanxi_tune.tui.field_row import (FieldRow, all_keys, group_fields,
                                     group_title, key_of)


class ConfigForm(VerticalScroll):
    """All groups, in the notes' order. Keeps ``config`` (valid or None) and ``errors``."""

    class Validated(Message):
        def __init__(self, form: "ConfigForm") -> None:
            super().__init__()
            self.form = form

    def __init__(self, cfg: C.Config, base: C.Config | None, **kw: Any) -> None:
        super().__init__(**kw)
        self.config: C.Config | None = cfg
        self.base = base
        self.preset = cfg.preset
        self.errors: dict[str, str] = {}
        self.general_error = ""
        self._flat_base = C.flatten(base) if base else {}
        self._rows: list[FieldRow] | None = None
        self._validate_scheduled = False

    EAGER_GROUPS = 3  # groups mounted before the first frame; the rest right after it

    class GroupShown(Message):
        def __init__(self, form: "ConfigForm", group: str) -> None:
            super().__init__()
            self.form = form
            self.group = group

    def compose(self) -> ComposeResult:
        flat = C.flatten(self.config)
        self._rows = []
        self._boxes: dict[str, Vertical] = {}
        self.active_group = C.GROUPS[0]
        for i, group in enumerate(C.GROUPS):
            box = Vertical(classes="group", id=f"group-{group}")
            # One group on screen at a time: the others are display:none, so a keystroke that changes a
            # row's height (a "changed" mark, an inline error) or a tab switch lays out ~15 rows, not ~500
            # widgets. Alt+←/→ (or the palette) moves between groups; focusing a key shows its group.
            box.display = group == self.active_group
            self._boxes[group] = box
            with (box if i < self.EAGER_GROUPS else Lazy(box)):
                yield Static(group_title(group), classes="group-title")
                for name, info in group_fields(group).items():
                    key = f"{group}.{name}"
                    row = FieldRow(key, info, flat[key])
                    self._rows.append(row)
                    yield row
        self._by_key = {r.key: r for r in self._rows}

    def show_group(self, group: str) -> None:
        if group not in self._boxes:
            raise KeyError(group)
        if group != self.active_group:
            self._boxes[self.active_group].display = False
            self._boxes[group].display = True
            self.active_group = group
            self.scroll_home(animate=False)
        self.post_message(self.GroupShown(self, group))

    def step_group(self, delta: int) -> str:
        groups = list(C.GROUPS)
        group = groups[(groups.index(self.active_group) + delta) % len(groups)]
        self.show_group(group)
        return group

    def show_key(self, key: str) -> FieldRow:
        """Show the group holding ``key`` and return its row (focus its ``editor`` next)."""
        self.show_group(key.split(".", 1)[0])
        return self.row(key)

    def focus_target(self) -> Any:
        """What a tab key focuses on this tab: the first ready field of the group shown, else the form."""
        for row in self.rows():
            if row.key.startswith(self.active_group + ".") and row.ready:
                return row.editor
        return self

    @property
    def all_mounted(self) -> bool:
        return all(r.ready for r in self.rows())

    def on_mount(self) -> None:
        self._refresh_marks()

    def rows(self) -> list[FieldRow]:
        return self._rows or []

    def row(self, key: str) -> FieldRow:
        return self._by_key[key]

    class ApplyLive(Message):
        """Enter on a live key while a run trains: apply this field's value to the run."""

        def __init__(self, key: str, value: Any) -> None:
            super().__init__()
            self.key, self.value = key, value

    locked_by = ""  # the run that trains while the form is locked

    def lock_to_live(self, run_name: str) -> None:
        """While ``run_name`` trains (empty: none), only live keys are editable; Enter on one applies it to the
        run. The others are read-only and the status line says why."""
        self.locked_by = run_name
        for row in self.rows():
            if not C.is_live(row.key):
                row.locked = bool(run_name)
                if row.ready:
                    row.editor.disabled = bool(run_name)

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        key = key_of(event.input.id)
        if self.locked_by and C.is_live(key):
            event.stop()
            if key in self.errors:
                self.app.notify(f"{key}: {self.errors[key]}", title="Not applied", severity="error")
                return
            self.post_message(self.ApplyLive(key, self.row(key).get_value()))

    def load(self, cfg: C.Config, base: C.Config | None) -> None:
        """Show another config (a loaded preset)."""
        self.base = base
        self._flat_base = C.flatten(base) if base else {}
        self.preset = cfg.preset
        flat = C.flatten(cfg)
        for row in self.rows():
            row.set_value(flat[row.key])
        self.config = cfg
        self.errors = {}
        self.general_error = ""
        self._refresh_marks()
        self.post_message(self.Validated(self))

    def apply_updates(self, updates: dict[str, Any]) -> C.Config | None:
        """Set several keys (a workflow's result) as if typed; the preset stays the base, so they show changed."""
        for key, value in updates.items():
            if key in self._by_key:
                self.row(key).set_value(value)
        return self.validate_now()

    def set_key(self, key: str, value: Any) -> None:
        """Set one field's editor (as if typed) and re-validate."""
        self.row(key).set_value(value)
        self.validate_now()

    def values(self) -> dict[str, Any]:
        return {row.key: row.get_value() for row in self.rows()}

    def validate_now(self) -> C.Config | None:
        try:
            cfg = C.with_updates(C.Config(preset=self.preset), self.values(), source="panel")
        except C.ConfigError as err:
            self.config = None
            self.errors = {}
            general = []
            keys = set(all_keys())
            for key, _value, msg in err.problems:
                if key in keys:
                    self.errors.setdefault(key, msg)
                else:
                    general.append(f"{key}: {msg}")
            self.general_error = "; ".join(general)
        else:
            self.config = cfg
            self.errors = {}
            self.general_error = ""
        self._refresh_marks()
        self.post_message(self.Validated(self))
        return self.config

    def changed_keys(self) -> list[str]:
        if not self._flat_base:
            return []
        vals = self.values()
        flat = C.flatten(self.config) if self.config else None
        out = []
        for key, value in vals.items():
            if key in self.errors:
                out.append(key)
                continue
            base = self._flat_base.get(key)
            cur = flat.get(key) if flat is not None else value
            if _norm(cur) != _norm(base):
                out.append(key)
        return out

    def _refresh_marks(self) -> None:
        flat = C.flatten(self.config) if self.config else None
        for row in self.rows():
            err = self.errors.get(row.key)
            base = self._flat_base.get(row.key) if self._flat_base else None
            if err:
                changed = bool(self._flat_base)
            elif flat is not None and self._flat_base:
                changed = _norm(flat[row.key]) != _norm(base)
            elif self._flat_base:
                changed = _norm(row.get_value()) != _norm(base)
            else:
                changed = False
            row.show(err, changed, base)

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Switch.Changed)
    def _edited(self, event: Message) -> None:
        event.stop()
        # coalesce: the 60-odd Changed events of a mount or a preset load validate once
        if not self._validate_scheduled:
            self._validate_scheduled = True
            self.call_after_refresh(self._deferred_validate)

    def _deferred_validate(self) -> None:
        self._validate_scheduled = False
        self.validate_now()

    def on_descendant_focus(self, event: Any) -> None:
        widget = event.widget
        if widget.id and widget.id.startswith("f-"):
            self.post_message(FieldFocused(key_of(widget.id)))


class FieldFocused(Message):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key


def _norm(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_norm(x) for x in v]
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v
