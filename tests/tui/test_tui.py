"""The TUI through Textual's Pilot: config panels, presets, palette (no training here)."""

from __future__ import annotations

import asyncio
import sys

from nanxi_tune.engine import config as C
from nanxi_tune.tui.app import NanxiTuneApp
from nanxi_tune.tui.field_row import parse_text
from conftest import notices, palette, wait_for


def run(coro):
    return asyncio.run(coro)




async def ready(pilot):
    await wait_for(pilot, lambda: pilot.app.form.all_mounted and pilot.app.query("#mon"))
    await pilot.pause()


async def type_into(pilot, key: str, text: str) -> None:
    app = pilot.app
    row = app.form.show_key(key)  # one group of the cheat-sheet on screen at a time
    await pilot.pause()
    row.scroll_visible(animate=False)
    ed = row.editor
    ed.focus()
    ed.value = ""
    await pilot.press(*text)
    await wait_for(pilot, lambda: ed.value == text, timeout=10)
    await pilot.pause()  # the form re-validates on the change


def test_parse_text_tomlish():
    assert parse_text("tuple", "0.7, 0.9") == [0.7, 0.9]
    assert parse_text("tuple", "[5, 9]") == [5, 9]
    assert parse_text("tuple", "5") == [5]
    assert parse_text("number", "1e-3") == 0.001
    assert parse_text("text", "123") == "123"


def test_panels_cover_every_schema_field(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            keys = [r.key for r in app.form.rows()]
            flat = C.flatten(C.Config())
            assert keys == [k for k in flat if k != "preset"]
            # group order follows the notes' cheat-sheet
            assert [k.split(".")[0] for k in dict.fromkeys(k.split(".")[0] for k in keys)] == list(C.GROUPS)
            # Chinese label and the notes' remark are on screen
            row = app.form.row("train.warmup_steps")
            assert "warmup disabled" in str(row.query_one(".field-info").render())
            assert "输入分辨率" in str(app.form.row("preprocess.input_size").query_one(".field-key").render())
            assert app.form.config == app.initial_cfg
    run(go())


def test_edit_valid_value_marks_change(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            await type_into(pilot, "train.base_lr", "0.01")
            assert app.form.config is not None
            assert app.form.config.train.base_lr == 0.01
            assert app.form.row("train.base_lr").has_class("-changed")
            assert not app.form.row("train.epochs").has_class("-changed")
            assert "train.base_lr" in app.form.changed_keys()
            assert "1 changed" in str(app.query_one("#config-status").render())
            # a Select (Literal) and a Switch (bool)
            app.form.row("preprocess.resize").editor.value = "letterbox"
            app.form.row("data.skip_bad").editor.value = True
            await wait_for(pilot, lambda: app.form.config.preprocess.resize == "letterbox"
                           and app.form.config.data.skip_bad is True, timeout=10)
            # tuples in TOML-ish syntax
            await type_into(pilot, "train.milestones", "0.5, 0.8")
            assert app.form.config.train.milestones == (0.5, 0.8)
    run(go())


def test_invalid_value_inline_error_and_refused_start(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await ready(pilot)
            await type_into(pilot, "preprocess.input_size", "100")
            row = app.form.row("preprocess.input_size")
            assert app.form.config is None
            assert row.has_class("-invalid")
            info = str(row.query_one(".field-info").render())
            assert "preprocess.input_size" in info and "multiple of 32" in info
            await type_into(pilot, "train.base_lr", "fast")
            assert "train.base_lr" in app.form.errors
            await pilot.press("f5")
            await wait_for(pilot, lambda: any("Cannot start" in n and "preprocess.input_size" in n
                                              for n in notices(app)), timeout=10)
            assert not app.running
            assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
            # fixing the values clears the errors
            await type_into(pilot, "preprocess.input_size", "96")
            await type_into(pilot, "train.base_lr", "0.003")
            assert app.form.config is not None and not app.form.errors
            assert not row.has_class("-invalid")
    run(go())


def test_preset_save_and_load_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            await type_into(pilot, "train.base_lr", "0.01")
            await type_into(pilot, "loss.s_shape", "0.5")
            # save as, through the dialog
            await pilot.press("f3")
            await wait_for(pilot, lambda: app.screen.query("#save-path"), timeout=10)
            path_input = app.screen.query_one("#save-path")
            path_input.value = str(tmp_path / "mine.toml")
            await pilot.press("enter")
            await wait_for(pilot, lambda: (tmp_path / "mine.toml").exists(), timeout=10)
            saved = C.load_preset(str(tmp_path / "mine.toml"))
            assert saved.train.base_lr == 0.01 and saved.loss.s_shape == 0.5 and saved.preset == "demo"
            # back to the bundled demo preset through the picker; two edited keys on the Config tab:
            # loading asks first; n keeps them, y replaces them
            from nanxi_tune.tui.dialogs import Confirm

            async def pick_demo(answer: str) -> None:
                await pilot.press("f2")
                await wait_for(pilot, lambda: app.screen.query("#preset-path"), timeout=10)
                app.screen.query_one("#preset-path").value = "demo"
                app.screen.query_one("#preset-path").focus()
                await pilot.press("enter")
                await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
                assert "2 edited key(s)" in app.screen.question and "train.base_lr" in app.screen.question
                await pilot.press(answer)

            await pick_demo("n")
            await wait_for(pilot, lambda: not isinstance(app.screen, Confirm))
            assert app.form.config.train.base_lr == 0.01
            await pick_demo("y")
            await wait_for(pilot, lambda: app.form.config.train.base_lr == 0.003, timeout=10)
            assert not app.form.changed_keys()
            # the saved file is in the picker (a .toml in the working folder) and loads back
            await pilot.press("f2")
            await wait_for(pilot, lambda: app.screen.query("#preset-list"), timeout=10)
            options = app.screen.query_one("#preset-list")
            ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
            assert str(tmp_path / "mine.toml") in ids and "demo" in ids
            options.focus()
            options.highlighted = ids.index(str(tmp_path / "mine.toml"))
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.form.config.train.base_lr == 0.01, timeout=10)
            assert app.form.config.loss.s_shape == 0.5
            assert set(app.form.changed_keys()) == {"train.base_lr", "loss.s_shape"}
            # diff view against the preset
            await pilot.press("f4")
            await wait_for(pilot, lambda: app.screen.query("#diff-body"), timeout=10)
            from rich.console import Console

            console = Console(width=100, record=True, file=open("/dev/null", "w"))
            console.print(app.screen.renderable)
            text = console.export_text()
            assert "train.base_lr" in text and "0.003" in text and "0.01" in text
            await pilot.press("escape")
    run(go())


def test_bad_preset_path_is_reported(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await ready(pilot)
            assert not app.load_preset(str(tmp_path / "nope.toml"))
            await wait_for(pilot, lambda: any("Cannot load preset" in n for n in notices(app)), timeout=10)
    run(go())


def test_command_palette_has_run_actions(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(100, 30)) as pilot:
            await ready(pilot)
            await palette(pilot, "save config")
            await wait_for(pilot, lambda: app.screen.query("#save-path"), timeout=10)
    run(go())


def test_bindings_have_ids_and_tooltips():
    ids = {b.id: b for b in NanxiTuneApp.BINDINGS}
    for action in ("start_run", "pause_run", "stop_run", "resume_run", "load_preset", "save_preset"):
        assert ids[action].action == action and ids[action].tooltip


def test_tui_modules_do_not_import_torch():
    import subprocess

    code = ("import sys, nanxi_tune.tui.app, nanxi_tune.tui.monitor, nanxi_tune.tui.dialogs;"
            "print('torch' in sys.modules, 'nanxi_tune.engine.train.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_config_groups_one_at_a_time(tmp_path):
    """Only the shown group is laid out (cheap keystrokes and tab switches); Alt+→ / the palette move on."""
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            groups = list(C.GROUPS)
            form = app.form
            assert form.active_group == groups[0]
            shown = [g for g in groups if form.query_one(f"#group-{g}").display]
            assert shown == [groups[0]]
            assert groups[0] in str(app.query_one("#group-bar").render())
            await pilot.press("alt+right")
            await pilot.pause()
            assert form.active_group == groups[1] and groups[1] in str(app.query_one("#group-bar").render())
            await pilot.press("alt+left", "alt+left")
            await pilot.pause()
            assert form.active_group == groups[-1]
            await palette(pilot, "config group: train")
            await wait_for(pilot, lambda: form.active_group == "train", timeout=10)
            # an invalid key in another group: F5 refuses and shows that key's group with its editor focused
            form.set_key("preprocess.input_size", 100)
            await pilot.press("f5")
            await wait_for(pilot, lambda: form.active_group == "preprocess"
                           and app.focused is form.row("preprocess.input_size").editor, timeout=10)
    run(go())


def test_pause_stop_refused_without_run(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await ready(pilot)
            await pilot.press("f6", "f7")
            await wait_for(pilot, lambda: sum("No live run" in n for n in notices(app)) == 2, timeout=10)
            await pilot.press("f8")
            await wait_for(pilot, lambda: any("No run to resume" in n for n in notices(app)), timeout=10)
    run(go())


def test_resume_dialog_fits_80x24_and_refuses_a_bad_value_inline(tmp_path):
    """The F8 dialog (resume of a stopped run) has its input on screen at 80×24 (the live keys with their
    current values scroll below it), and a bad value is refused in the dialog, naming the key, instead of
    starting a resume that fails; a misspelled key is "unknown" with the closest known keys."""
    from textual.widgets import Input, Static

    from nanxi_tune.tui.dialogs import LiveEditDialog

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    ran = C.load_preset("demo")
    C.save(ran, run_dir / "config.toml")
    results = []

    async def go():
        app = NanxiTuneApp(preset="demo", runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            app.push_screen(LiveEditDialog(run_dir, ran, "", live=False), results.append)
            await wait_for(pilot, lambda: isinstance(app.screen, LiveEditDialog), timeout=10)
            await pilot.pause()
            inp = app.screen.query_one("#live-updates", Input)
            assert inp.has_focus and inp.region.bottom <= 24 and inp.region.height > 0
            shown = str(app.screen.query_one("#live-keys Static", Static).render())
            assert f"train.base_lr = {ran.train.base_lr}" in shown
            err = app.screen.query_one("#live-error", Static)
            for text in ("train.base_lr=abc", "train.base_lr=-1", "train.no_such=1", "preprocess.input_size=64"):
                err.update("")
                inp.value = text
                await pilot.press("enter")
                await wait_for(pilot, lambda: text.split("=")[0] in str(err.render()), timeout=10)
                assert isinstance(app.screen, LiveEditDialog) and results == []
            inp.value = "train.base_rl=0.001"
            await pilot.press("enter")
            await wait_for(pilot, lambda: "unknown key" in str(err.render()), timeout=10)
            assert "train.base_lr" in str(err.render()) and "not a live key" not in str(err.render())
            inp.value = "train.base_lr=0.001"
            await pilot.press("enter")
            await wait_for(pilot, lambda: results != [], timeout=10)
            assert results == [{"train.base_lr": 0.001}]

    run(go())


def test_palette_finds_a_config_key_and_shows_binding_keys(tmp_path):
    """Typing "base_lr" in the palette offers "Edit train.base_lr"; Enter shows and focuses that field.
    Actions carry their key ("Start run  (F5)"), shown as written (the palette reads names as markup)."""
    from nanxi_tune.tui.app import RunCommands

    from types import SimpleNamespace

    class FakeApp(SimpleNamespace):
        BINDINGS = NanxiTuneApp.BINDINGS

    main, workflow = object(), object()
    fake_app = FakeApp(run_action=print, show_config_group=print, edit_key=print, screen_stack=[main, workflow])
    names = [n for n, _fn, _h in RunCommands._entries(SimpleNamespace(app=fake_app, screen=main))]
    assert "Start run  (F5)" in names and any(n.startswith("Edit train.base_lr") for n in names)
    # over a workflow screen the main run's keys are not offered (they would start a run out of sight)
    over = [n for n, _fn, _h in RunCommands._entries(SimpleNamespace(app=fake_app, screen=workflow))]
    assert not any(n.startswith(("Start run", "Pause", "Stop", "Live edit")) for n in over) and "Save config as  (F3)" in over
    from textual.fuzzy import Matcher

    assert all(Matcher("s").highlight(n).plain == n for n in names)  # nothing in a name is taken for markup
    from textual.binding import Binding

    from nanxi_tune.tui.palette import key_label

    # one label rule for the app's keys and a pushed screen's
    assert [key_label(Binding(k, "a", "d")) for k in ("ctrl+n", "alt+b", "escape", "enter", "j", "f9")] == \
        ["^N", "Alt+B", "Esc", "Enter", "j", "F9"]
    assert any(n.endswith("(^N)") for n in names)  # the app's Ctrl+N (post-processing), as a screen's would show

    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            await pilot.press("ctrl+t")  # away from the Config tab first
            await palette(pilot, "edit train.base_lr")
            await wait_for(pilot, lambda: app.query_one("#tabs").active == "config" and app.focused is not None
                           and app.focused is app.form.row("train.base_lr").editor)
    run(go())


def test_runs_tab_title_fits_80_columns(tmp_path):
    """The Runs tab's one-line help is read whole at 80×24 (its last words, F8, were cut off)."""
    from textual.widgets import Static

    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            await pilot.press("alt+3")
            title = app.query_one("#runs-pane .section-title", Static)
            await wait_for(pilot, lambda: title.content_region.width > 0, timeout=10)
            text = str(title.render())
            assert "F8" in text and len(text) <= title.content_region.width, (len(text), title.content_region)
    run(go())


def test_live_edit_prefills_only_the_config_tabs_own_edits(tmp_path):
    """F8 on an attached run started elsewhere (another preset): the input holds no changes the user never made
    (it held the app's preset values of every live key the run differs in: Enter would have cut train.epochs);
    a live key edited on the Config tab is offered."""
    from textual.widgets import Input

    from nanxi_tune.engine.run import runctl
    from nanxi_tune.tui.dialogs import LiveEditDialog

    run_dir = tmp_path / "runs" / "other"
    run_dir.mkdir(parents=True)
    C.save(C.with_updates(C.load_preset("demo"), {"train.epochs": 2000, "eval.interval": 1000}),
           run_dir / "config.toml")
    owner = runctl.RunOwner.acquire(run_dir)  # a live trainer's lock and heartbeat, as another process holds them
    owner.update(state="running")

    async def go():
        app = NanxiTuneApp(preset="demo", runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            app.open_run(run_dir)
            await wait_for(pilot, lambda: app.session is not None and app.session.alive, timeout=10)
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, LiveEditDialog), timeout=10)
            assert app.screen.live
            assert app.screen.query_one("#live-updates", Input).value == ""
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, LiveEditDialog), timeout=10)
            app.form.set_key("train.base_lr", 0.002)
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, LiveEditDialog), timeout=10)
            assert app.screen.query_one("#live-updates", Input).value == "train.base_lr=0.002"
    try:
        run(go())
    finally:
        owner.release()


def test_runs_tab_shows_a_live_runs_mark_whole(tmp_path):
    """A live run's status reads "running ●" on the Runs tab: no cell is wider than its column (the 8-cell status
    column cut the ● off every running run)."""
    from rich.cells import cell_len

    from nanxi_tune.engine.run import runctl

    run_dir = tmp_path / "runs" / "live-one"
    run_dir.mkdir(parents=True)
    C.save(C.load_preset("demo"), run_dir / "config.toml")
    owner = runctl.RunOwner.acquire(run_dir)
    owner.update(state="stopping")

    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            await pilot.press("alt+3")
            table = app.query_one("#runs-table")
            await wait_for(pilot, lambda: table.row_count == 1, timeout=10)
            assert table.get_cell_at((0, 2)) == "stopping ●"
            for key, col in table.columns.items():
                cells = [str(table.get_cell(row, key)) for row in table.rows]
                assert all(cell_len(c) <= col.width for c in cells), (key, col.width, cells)
            assert sum(c.width + 2 * table.cell_padding for c in table.columns.values()) <= table.content_region.width, \
                table.content_region
    try:
        run(go())
    finally:
        owner.release()


def test_quick_tab_keys_end_on_the_last_tab_asked(tmp_path):
    """Alt+3 then Alt+1 arriving together (a burst over SSH) ends on the Config tab: the Runs tab's activation,
    handled after the second key, focused its table and so switched back to Runs."""
    from textual import events

    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            tabs = app.query_one("#tabs")
            for first, second, want in (("alt+3", "alt+1", "config"), ("alt+2", "alt+3", "runs"),
                                        ("alt+3", "alt+2", "monitor"), ("alt+2", "alt+1", "config")):
                app.post_message(events.Key(first, None))
                app.post_message(events.Key(second, None))
                for _ in range(10):
                    await pilot.pause(0.05)
                assert tabs.active == want, (first, second, tabs.active)
    run(go())
