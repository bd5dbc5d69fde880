"""Who may read and control a run: the run folder's mode is the rule, set here once (issue 22).

- **Private** (the default): a run folder is ``0700``. Only its owner reads its weights, attaches to it, sends it
  commands (``ctl``, the TUI) or resumes it; nobody else can hold its ``owner.lock`` either.
- **Shared with a group** (``nanxi-tune --group NAME …``, or ``NANXI_TUNE_GROUP=NAME``, for a box a team shares):
  the folder is ``2770`` and belongs to that group, and the process writes with umask ``007``: the group's members
  read, attach, control and resume it; others get nothing. The setgid bit hands the group down to every file and
  folder made inside.

The choice travels to child processes (detached runs, study trials, torchrun ranks) in ``NANXI_TUNE_GROUP``.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

GROUP_ENV = "NANXI_TUNE_GROUP"
PRIVATE_MODE = 0o700
SHARED_MODE = 0o2770


class AccessError(ValueError):
    """``--group`` names a group this user cannot share with."""


def share_with(group: str | None) -> None:
    """Make what this process (and its children) creates usable by ``group``'s members; None keeps it private."""
    if not group:
        return
    gid = group_id(group)
    if gid not in os.getgroups() and gid != os.getgid() and os.geteuid() != 0:
        raise AccessError(f"--group {group}: you are not a member of group {group}; `id` lists yours")
    os.environ[GROUP_ENV] = group
    os.umask(0o007)


def group_id(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise AccessError(f"--group {group}: no such group on this machine (`getent group` lists them)") from None


def shared_group() -> int | None:
    name = os.environ.get(GROUP_ENV)
    return group_id(name) if name else None


def secure(folder: Path | str) -> None:
    """Give a run folder its mode (private, or shared with the group): only its owner can, so others' folders are
    left as they are."""
    folder = Path(folder)
    try:
        st = folder.stat()
    except FileNotFoundError:
        return
    if st.st_uid != os.geteuid():
        return
    gid = shared_group()
    if gid is None:
        if stat.S_IMODE(st.st_mode) != PRIVATE_MODE:
            folder.chmod(PRIVATE_MODE)
        return
    if st.st_gid != gid:
        os.chown(folder, -1, gid)
    folder.chmod(SHARED_MODE)


def make_folder(folder: Path | str) -> Path:
    """A new run folder (its parents as usual), born with its mode: no moment where others could open it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=PRIVATE_MODE)
    secure(folder)
    return folder


def denied(err: PermissionError) -> str:
    """What a user reads for a permission error on someone else's run: whose it is and who may control it."""
    path = Path(err.filename or "")
    owner = ""
    for p in (path, *path.parents):
        try:
            st = p.stat()
        except OSError:
            continue
        if st.st_uid != os.geteuid():
            owner = f"{p} belongs to {_user(st.st_uid)} (mode {stat.S_IMODE(st.st_mode):o})"
            break
    return (f"permission denied: {path}" + (f"; {owner}" if owner else "")
            + ". A run is private to the user who started it; on a shared box start it with "
              "`nanxi-tune --group NAME …` so the group's members may read and control it")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
