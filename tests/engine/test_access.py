"""Who may read and control a run (engine.run.access, issue 22): run folders private to their owner by default, shared
with a group on request; another user gets a clear refusal, never a traceback, and cannot block a resume."""

from __future__ import annotations

import grp
import io
import os
import stat
import subprocess
import sys
from contextlib import redirect_stderr

import pytest

from nanxi_tune.engine.run import access, rundir, runctl
from nanxi_tune.engine.train.trainer import Trainer

from conftest import tiny

NOBODY = 65534


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _stopped_run(tmp_path):
    run = rundir.new_run_dir(tmp_path / "runs", "r")
    assert Trainer(tiny(**{"train.epochs": 1, "eval.online": False}), run, lambda e: None, max_steps=2).run() \
        == "stopped"
    return run


def test_a_run_folder_is_private_to_its_owner(tmp_path, monkeypatch, one_thread):
    monkeypatch.delenv(access.GROUP_ENV, raising=False)
    run = _stopped_run(tmp_path)
    assert _mode(run) == 0o700 and _mode(run / rundir.CONTROL) == 0o700
    given = tmp_path / "given"  # a folder the user named (--run-dir) gets the same mode when its owner takes it
    given.mkdir(mode=0o755)
    runctl.RunOwner.acquire(given).release()
    assert _mode(given) == 0o700


def test_a_group_option_shares_the_folder_with_the_group(tmp_path, monkeypatch):
    name = grp.getgrgid(os.getgid()).gr_name
    monkeypatch.setenv(access.GROUP_ENV, name)
    run = rundir.new_run_dir(tmp_path / "runs", "g")
    owner = runctl.RunOwner.acquire(run)
    try:
        for folder in (run, run / rundir.CONTROL):
            st = os.stat(folder)
            assert stat.S_IMODE(st.st_mode) == access.SHARED_MODE and st.st_gid == os.getgid()
    finally:
        owner.release()
    with pytest.raises(access.AccessError, match="no such group"):
        access.share_with("no-such-group-here")


def test_a_stray_lock_on_owner_lock_is_named_not_blamed_on_a_dead_trainer(tmp_path, one_thread):
    run = _stopped_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(run / rundir.OWNER_LOCK)!r}, os.O_RDONLY)\n"
                               "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runctl.RunBusy) as err:
            runctl.RunOwner.acquire(run)
        assert f"pid {holder.pid}" in str(err.value) and "not this run's trainer" in str(err.value), str(err.value)
    finally:
        holder.kill()
        holder.wait()
    runctl.RunOwner.acquire(run).release()  # the lock gone, the run is its owner's again


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_can_neither_read_nor_control_a_private_run(tmp_path, one_thread):
    from nanxi_tune.cli.main import main

    import shutil
    import tempfile
    from pathlib import Path

    open_root = Path(tempfile.mkdtemp(prefix="nanxi-access-", dir="/tmp"))  # others may walk to the runs folder
    os.chmod(open_root, 0o755)
    try:
        _as_nobody(main, _stopped_run(open_root))
    finally:
        shutil.rmtree(open_root, ignore_errors=True)


def _as_nobody(main, run) -> None:
    os.chmod(run.parent, 0o755)
    with redirect_stderr(io.StringIO()):
        main(["ctl", str(run), "status"])  # every module the child needs is imported before it drops root
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user: no module may be imported from here on (the interpreter lives under /root)
        code = 99
        try:
            os.close(read)
            os.setgid(NOBODY)
            os.setgroups([])
            os.setuid(NOBODY)
            lines = [f"listed {len(os.listdir(run.parent))}"]  # the way there is open: only the run is closed
            for path in (run / rundir.CHECKPOINTS / "last.pt", run / rundir.OWNER_LOCK):
                try:
                    open(path, "rb").close()
                    lines.append(f"opened {path.name}")
                except PermissionError:
                    lines.append(f"refused {path.name}")
            err = io.StringIO()
            with redirect_stderr(err):
                code = main(["ctl", str(run), "pause"])
            os.write(write, ("\n".join(lines) + f"\nexit {code}\n" + err.getvalue()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    assert "listed 1" in out, out
    assert "refused last.pt" in out and "refused owner.lock" in out, out
    assert "exit 2" in out and "permission denied" in out and "belongs to root" in out, out
    assert "--group" in out and "Traceback" not in out, out
