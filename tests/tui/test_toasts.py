"""A notification shows whole at 80×24: the part that says what to do comes last, and it used to run off the screen."""

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
