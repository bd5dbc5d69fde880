"""Journal: parent (resume, remedy, sweep), config diff vs preset, results, findings; records; compare."""

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.workflows import remedy
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.workflows import records as journal
from nanxi_tune.engine.train.trainer import Trainer
from conftest import tiny as base_tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**updates):
    extra = {"data.synthetic_train": 16, "train.epochs": 2, "eval.online": False, "eval.interval": 1}
    return base_tiny(**(extra | updates))


def test_records_lines_and_compare(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert Trainer(tiny(), a, max_steps=2).run() == "stopped"
    assert Trainer.resume(a).run() == "finished"
    assert Trainer(tiny(**{"preprocess.resize": "letterbox"}), b).run() == "finished"
    finding = {"rule": "flat-loss-after-epoch-2", "remedy": {"set": {"train.base_lr": 0.001}, "resume_from_step": 2}}
    child = remedy.apply(a, finding, tmp_path, trial=False)
    assert Trainer.resume(child).run() == "finished"

    ra = journal.record(a)
    assert ra["resumes"] == 1 and ra["status"] == "finished" and ra["mAP"] is not None
    assert ra["changes"]["preprocess.input_size"] == [128, 64]
    text = (a / rundir.JOURNAL).read_text()
    assert "resumed: resumed from" in text and "## Config vs preset" in text
    rc = journal.record(child)
    assert rc["parent"] == str(a) and rc["reason"] == "flat-loss-after-epoch-2"
    assert rc["changes"]["train.base_lr"] == [0.003, 0.001]

    recs = journal.records(tmp_path)
    assert {r["name"] for r in recs} == {"a", "b", child.name}
    out = journal.render_records(recs)
    lb = next(x for x in out.splitlines() if x.startswith("b:"))
    assert "preprocess.resize letterbox vs same_padding" in lb and "mAP" in lb
    assert "flat-loss-after-epoch-2 of a" in out and "resumed 1×" in out
    md = journal.render_records(recs, markdown=True)
    assert md.startswith("- ")

    cmp = journal.compare(a, b)
    assert ("preprocess.resize", "same_padding", "letterbox") in cmp["diff"]
    assert cmp["curves"]["a"]["train_loss"] and cmp["curves"]["b"]["mAP"]
    assert cmp["summary"].startswith("a vs b: mAP") and "preprocess.resize same_padding vs letterbox" in cmp["summary"]


def test_records_survive_a_broken_folder(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / rundir.CONFIG).write_text("not = [toml")
    recs = journal.records(tmp_path)
    assert recs[0]["name"] == "bad" and "unreadable" in journal.render_records(recs)


def test_the_timeline_tells_starts_pauses_continues_stops_and_resumes(tmp_path):
    """Issue 22: the timeline left out continue and resume and printed "stopped stopped by request"."""
    from nanxi_tune.engine.run import journal as J
    from nanxi_tune.engine.run import recorder
    from nanxi_tune.engine.run.events import RunState, StateChanged

    run = tmp_path / "r"
    run.mkdir()
    C.save(tiny(), run / rundir.CONFIG)
    recorder.append(run, *(StateChanged(s, n, m) for s, n, m in (
        (RunState.RUNNING, 0, "started"), (RunState.PAUSED, 5, ""), (RunState.RUNNING, 5, "continued"),
        (RunState.STOPPING, 9, ""), (RunState.STOPPED, 9, "stopped by request; resume to continue"),
        (RunState.RUNNING, 9, "resumed"), (RunState.FINISHED, 20, "best mAP 0.5000"))))
    timeline = J.render(run).split("## Timeline")[1]
    lines = [ln.split(": ", 1)[1] for ln in timeline.strip().splitlines()]
    assert lines == ["started", "paused", "continued", "stopping", "stopped by request; resume to continue",
                     "resumed", "finished: best mAP 0.5000"], lines
