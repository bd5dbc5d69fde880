"""One key of the cheat-sheet as a row: its label (the notes' Chinese beside the key), an editor chosen from the
field's type, and the line under it (the error naming the key, the preset's value, the notes' remark)."""

from __future__ import annotations

import typing
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
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
