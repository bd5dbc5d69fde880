"""The cheat-sheet (超参数速查表) as editable panels, generated from the pydantic schema.

No per-field UI code: every field of every group in ``config.GROUPS`` gets a row whose
editor is chosen from the field's type (Literal → Select, bool → Switch, anything else →
Input parsed TOML-style by ``config.parse_value``). Each edit re-validates the whole config
with ``config.with_updates``; pydantic's message appears inline under the field, naming the key.
"""

from __future__ import annotations

import typing
from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.lazy import Lazy
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, Switch

from nanxi_tune.engine import config as C


def field_id(key: str) -> str:
    return "f-" + key.replace(".", "--")


def key_of(widget_id: str | None) -> str:
    return (widget_id or "")[2:].replace("--", ".")


def group_fields(group: str) -> dict[str, Any]:
    return C.Config.model_fields[group].annotation.model_fields


def group_title(group: str) -> str:
    doc = (C.Config.model_fields[group].annotation.__doc__ or "").strip().splitlines()[0]
    return f"{group} — {doc}" if doc and doc.lower() != group else group


def all_keys() -> list[str]:
    return [f"{g}.{n}" for g in C.GROUPS for n in group_fields(g)]


def kind_of(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "select"
    if annotation is bool:
        return "switch"
    if annotation is str:
        return "text"
    if typing.get_origin(annotation) is tuple:
        return "tuple"
    return "number"


def format_value(value: Any) -> str:
    """A field's text: its TOML, strings bare (a field knows its own kind)."""
    return value if isinstance(value, str) else C.toml_value(value)


def parse_text(kind: str, text: str) -> Any:
    """An Input's text as a config value: TOML-ish (``[0.7, 0.9]`` or ``0.7, 0.9`` for tuples)."""
    text = text.strip()
    if kind == "text":
        return text
    value = C.parse_value(text)
    if kind == "tuple":
        if isinstance(value, str) and text and not text.startswith("["):
            value = C.parse_value(f"[{text}]")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
    return value


def label_text(key: str, info: Any) -> Text:
    name = key.split(".", 1)[1]
    extra = info.json_schema_extra or {}
    zh = extra.get("zh") or ""
    if zh.startswith(name):
        zh = zh[len(name):].lstrip(" :：")
    t = Text(name, style="bold")
    if zh and zh != name:
        t.append(f"  {zh}", style="italic")
    if extra.get("live"):
        t.append(" ⟳", style="dim")
    return t


class OrderedInput(Input):
    """An Input that applies every key in the order typed, however fast the keys arrive.

    Textual's Input inserts a printable character as soon as its Key event reaches the Input, but a
    bound key (Backspace, End, Ctrl+U, arrows, …) only runs once its Key event has bubbled up through
    every ancestor to the App, which then looks the binding up back on the Input — one message hop per
    DOM level (a dozen here). Keys that arrive in one read (a burst over SSH, a paste of keystrokes) are
    all forwarded to the Input at once, so the characters behind a bound key overtake it: End, Ctrl+U,
    ``0.004`` inserted ``0.004`` and then cleared the field (Textual issue #6605). This Input runs its
    own bindings inline, from its own Key handler, exactly as the App would have (the focused widget is
    the first namespace of the binding chain; priority bindings were already checked by the App before
    the key reached the Input), so each key is applied before the next one is read.
    """

    async def _on_key(self, event: events.Key) -> None:
        if not event.is_printable:
            for binding in self._bindings.key_to_bindings.get(event.key, ()):
                if not binding.priority and await self.app.run_action(binding.action, self):
                    self._restart_blink()
                    event.stop()
                    event.prevent_default()
                    return
        await super()._on_key(event)


class OnOffSwitch(Switch):
    """A Switch whose state reads in words, not only in colour and knob position: ``[■] on`` / ``[ ] off``."""

    DEFAULT_CSS = "OnOffSwitch { width: 9; }"

    def render(self) -> Text:
        return Text("[■] on " if self.value else "[ ] off", style="bold" if self.value else "")


class FieldRow(Vertical):
    """One config key: label, editor, the notes' remark, and an inline error."""

    def __init__(self, key: str, info: Any, value: Any) -> None:
        super().__init__(classes="field", id="row-" + field_id(key))
        self.key = key
        self.info = info
        self.kind = kind_of(info.annotation)
        self.initial = value
        self._editor: Any = None
        self._shown: tuple | None = None
        self._pending_show: tuple | None = None
        self.locked = False  # a run trains: only live keys may change (ConfigForm.lock)

    def compose(self) -> ComposeResult:
        fid = field_id(self.key)
        tip = f"{self.key}: {self.info.description or ''}"
        yield Label(self._label(False), classes="field-key")
        if self.kind == "select":
            options = [(format_value(o), o) for o in typing.get_args(self.info.annotation)]
            ed: Any = Select(options, value=self.initial, allow_blank=False, id=fid, compact=True)
        elif self.kind == "switch":
            ed = OnOffSwitch(value=bool(self.initial), id=fid)
        else:
            ed = OrderedInput(format_value(self.initial), id=fid, compact=True, select_on_focus=False)
        ed.tooltip = tip
        ed.disabled = self.locked
        yield ed
        self._note = (self.info.json_schema_extra or {}).get("note") or ""
        info = Static(self._info_text(None, False, None), classes="field-info")
        info.display = bool(self._note)
        yield info

    def _label(self, focused: bool) -> Text:
        """The key's label; the focused field's starts with ▸, so it reads without colour."""
        return Text.assemble("▸ " if focused else "  ", label_text(self.key, self.info))

    def on_descendant_focus(self, _event: Any) -> None:
        self.query_one(".field-key", Label).update(self._label(True))

    def on_descendant_blur(self, _event: Any) -> None:
        self.query_one(".field-key", Label).update(self._label(False))

    def _info_text(self, error: str | None, changed: bool, base_value: Any) -> Text:
        t = Text()
        if changed:
            t.append("● changed; preset: " + format_value(base_value), style="bold")
        if error:
            if t:
                t.append("\n")
            t.append(f"✗ {self.key}: {error}", style="bold")
        if self._note:
            if t:
                t.append("\n")
            t.append(self._note, style="italic")
        return t

    @property
    def editor(self) -> Input | Select | Switch:
        if self._editor is None:
            self._editor = self.query_one("#" + field_id(self.key))
        return self._editor

    @property
    def ready(self) -> bool:
        return self._editor is not None or bool(self.is_mounted and self.children)

    def _composed_editor(self) -> Any:
        """The editor once composed (a lazily mounted group may compose it at any moment), else None."""
        if self._editor is None:
            try:
                self._editor = self.query_one("#" + field_id(self.key))
            except NoMatches:
                return None
        return self._editor

    def get_value(self) -> Any:
        ed = self._composed_editor()
        if ed is None:  # lazily mounted group not there yet
            return self.initial
        if isinstance(ed, Input):
            return parse_text(self.kind, ed.value)
        return ed.value

    def set_value(self, value: Any) -> None:
        self.initial = value  # what compose shows if it has not run yet
        ed = self._composed_editor()
        if ed is None:
            return
        if isinstance(ed, Input):
            text = format_value(value)
            if ed.value != text:
                ed.value = text
        elif isinstance(ed, Switch):
            ed.value = bool(value)
        elif not ed.query("#label"):  # a Select composed but not its label yet: Textual's watcher would raise
            self.call_after_refresh(self.set_value, value)
        else:
            ed.value = value

    def on_mount(self) -> None:
        if self._pending_show is not None:
            self.show(*self._pending_show)

    def show(self, error: str | None, changed: bool, base_value: Any = None) -> None:
        state = (error, changed, repr(base_value))
        if not self.ready:
            self._pending_show = (error, changed, base_value)
            return
        if state == self._shown:
            return
        self._shown = state
        info = self.query_one(".field-info", Static)
        text = self._info_text(error, changed, base_value)
        info.update(text)
        info.display = bool(text)
        info.set_class(bool(error), "-error")
        self.set_class(bool(error), "-invalid")
        self.set_class(changed, "-changed")


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
