"""A notification shows whole at 80×24, and the compare table is as wide as what it shows, from its first drawing."""

import asyncio
import textwrap

from nanxi_tune.tui.app import NanxiTuneApp

MESSAGE = ("/nope.json: no such file or folder; set data.train to a COCO folder (images/ + "
           "annotations/instances_train.json), an instances JSON, or 'synthetic'")


def test_a_long_notification_fits_inside_an_80_by_24_screen(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await pilot.pause()
            app.notify(MESSAGE, severity="error")
            await pilot.pause(0.3)
            toast = app.screen.query_one("Toast")
            box = toast.content_region
            lines = textwrap.wrap(MESSAGE, box.width)
            assert toast.region.bottom <= 24 - 1  # above the footer
            assert len(lines) <= box.height, (box, lines)

    asyncio.run(go())


def test_two_runs_of_one_config_compare_as_same_config_in_a_column_wide_enough(tmp_path):
    """The compare table's columns take their widths from the rows shown: "(same config)" too, not only the keys."""
    import json

    from textual.app import App

    from nanxi_tune.engine import config as C
    from nanxi_tune.tui.compare_view import CompareScreen

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        C.save(C.load_preset("demo"), tmp_path / name / "config.toml")
        (tmp_path / name / "metrics.jsonl").write_text(
            json.dumps({"kind": "step", "step": 1, "split": "train", "loss": 1.0, "time": 1.0}) + "\n")
    screen = CompareScreen(tmp_path / "a", tmp_path / "b")

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(screen)

    async def go():
        async with Host().run_test(size=(120, 30)) as pilot:
            for _ in range(200):
                if screen.data is not None:
                    break
                await pilot.pause(0.05)
            table = screen.query_one("#cmp-diff")
            assert [str(c) for c in table.get_row_at(0)][0] == "(same config)"
            assert next(iter(table.columns.values())).width >= len("(same config)")

    asyncio.run(go())
