"""engine.run.job.Job (a remedy's trial descent owns its folder): pause and continue say what they changed, and a
continue on a running job or a second pause records no state change."""

from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run.events import RunState
from nanxi_tune.engine.run.job import Job


def test_pause_and_continue_say_what_changed_and_record_only_changes(tmp_path):
    job = Job(tmp_path / "descent", "trial descent")
    try:
        said = [runctl.request(job.folder, op, None, "test", 30)["message"]
                for op in (runctl.Op.CONTINUE, runctl.Op.PAUSE, runctl.Op.PAUSE, runctl.Op.CONTINUE)]
    finally:
        job.close(RunState.FINISHED, "done")
    assert said == ["trial descent not paused (running)", "trial descent paused", "trial descent already paused",
                    "trial descent continued"]
    states = [e.get("message") for e in rundir.read_events(job.folder) if e.get("kind") == "state"]
    assert states == ["trial descent started", "paused by request", "continued", "done"]
