"""The app's Config tab and preset keys: the status line, group bar and field help, load / save / diff."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data import datapaths
from nanxi_tune.tui.config_form import ConfigForm, FieldFocused
from nanxi_tune.tui.dialogs import Confirm, DiffView, PresetPicker, SaveAs, diff_table


class ConfigActions:
    """Mixed into the app (tui.app.NanxiTuneApp); handlers follow Textual's on_<message> naming.

    What it needs of the app: the form it composes (below), ``running`` (RunActions), ``action_tab`` (the app);
    Textual's App gives ``notify``, ``push_screen``, ``query_one``."""

    form: ConfigForm  # the app's property

    # --- config ------------------------------------------------------------------------------
    def on_config_form_validated(self, event: ConfigForm.Validated) -> None:
        if not self.query("#config-status"):  # the app is shutting down
            return
        form = event.form
        t = Text()
        t.append(f"preset {form.preset or '—'}", style="bold")
        changed = form.changed_keys()
        t.append(f" · {len(changed)} changed" if changed else " · unchanged")
        if form.config is not None:
            cfg = form.config
            try:  # a path that is not there is not valid: said here, not when F5 fails
                datapaths.check(cfg)
                t.append(" · valid ✓", style="bold green")
            except datapaths.DataError as err:
                t.append(f" · ✗ data not found: {str(err).split(':')[0][-40:]}", style="bold red")
            if cfg.train.devices != 1:  # data-parallel: the batch is per device, the lr follows the global batch
                n = cfg.train.devices
                t.append(f" · batch {cfg.data.batch_size}/device × {n}" + (f" = {cfg.data.batch_size * n} global"
                                                                           if n != "auto" else " GPUs"))
        else:
            bad = list(form.errors) + ([form.general_error] if form.general_error else [])
            t.append(f" · ✗ {len(bad)} invalid: {', '.join(bad)[:60]}", style="bold red")
        if form.locked_by:
            t.append(f" · {form.locked_by} trains: only ⟳ live keys change, Enter applies one", style="bold yellow")
        else:
            t.append(" · Tab moves · ^t next tab · F5 start · ⟳ live key", style="dim")
        self.query_one("#config-status", Static).update(t, layout=False)  # fixed height: no re-layout

    def action_config_group(self, delta: int) -> None:
        self.action_tab("config")
        self.form.step_group(int(delta))

    def edit_key(self, key: str) -> None:
        """The Config tab, with the field of ``key`` shown and focused (the palette's "Edit …" entries)."""
        self.action_tab("config")
        row = self.form.show_key(key)
        self.call_after_refresh(lambda: row.editor.focus())

    def show_config_group(self, group: str) -> None:
        self.action_tab("config")
        self.form.show_group(group)

    def on_config_form_group_shown(self, event: ConfigForm.GroupShown) -> None:
        groups = list(C.GROUPS)
        i = groups.index(event.group)
        t = Text()
        t.append(f" {event.group} ", style="bold reverse")
        t.append(f" {i + 1}/{len(groups)}  ")
        t.append(f"◀ {groups[i - 1]}  ·  {groups[(i + 1) % len(groups)]} ▶", style="dim")
        t.append("  alt+←/→", style="dim")
        self.query_one("#group-bar", Static).update(t, layout=False)

    def on_field_focused(self, event: FieldFocused) -> None:
        info = C.field_info(event.key)
        if info is None:
            return
        t = Text(event.key, style="bold")
        t.append(f": {info.description or ''}")
        if C.is_live(event.key):
            t.append("  (live: may change when resuming)", style="dim")
        self.query_one("#field-help", Static).update(t, layout=False)

    def first_error(self) -> tuple[str, str] | None:
        form = self.form
        if form.config is not None:
            return None
        if form.errors:
            key = next(iter(form.errors))
            return key, form.errors[key]
        return "config", form.general_error or "invalid"

    # --- presets -----------------------------------------------------------------------------
    def action_load_preset(self) -> None:
        def done(value: str | None) -> None:
            if not value:
                return
            edited = self.form.changed_keys()
            if not edited:
                self.load_preset(value)
                return
            self.push_screen(Confirm(f"Load {value}? It replaces {len(edited)} edited key(s) on the Config tab "
                                     f"({', '.join(edited[:3])}{', …' if len(edited) > 3 else ''}); F3 saves "
                                     "them first. y loads, n keeps them."),
                             lambda yes: self.load_preset(value) if yes else None)
        self.push_screen(PresetPicker(), done)

    def load_preset(self, name_or_path: str) -> bool:
        try:
            cfg = C.load_preset(name_or_path)
        except C.ConfigError as err:
            self.notify(str(err), title="Cannot load preset", severity="error", timeout=8)
            return False
        self.form.load(cfg, C.base_of(cfg))
        if not self.running:  # the title names the run while one is in progress
            self.sub_title = f"preset {cfg.preset}"
        self.notify(f"Loaded {name_or_path}")
        return True

    def action_save_preset(self) -> None:
        cfg = self.form.validate_now()
        if cfg is None:
            key, msg = self.first_error()
            self.notify(f"{key}: {msg}", title="Cannot save an invalid config", severity="error")
            return
        default = f"{Path(cfg.preset).stem or 'config'}-mine.toml"

        def done(path: str | None) -> None:
            if path:
                self.save_preset(path)
        self.push_screen(SaveAs(default), done)

    def save_preset(self, path: str | Path) -> Path | None:
        cfg = self.form.validate_now()
        if cfg is None:
            key, msg = self.first_error()
            self.notify(f"{key}: {msg}", title="Cannot save an invalid config", severity="error")
            return None
        try:
            out = C.save(cfg, path)
        except OSError as err:
            self.notify(str(err), title="Cannot save", severity="error")
            return None
        self.notify(f"Saved {out}")
        return out

    def action_show_diff(self) -> None:
        form = self.form
        form.validate_now()
        self.push_screen(DiffView(diff_table(form.config, form.base, form.errors)))
