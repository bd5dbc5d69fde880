"""A study: the notes' method (a seven-stars sweep of one key) as a job like a run, on Optuna.

::

    runs/<study>/
      study.json       the spec: kind, key, values, trial budget, storage, the Optuna study's name, base config
      optuna.journal   Optuna's journal file storage (the default; a database URL serves several machines)
      owner.lock, owner.json, control/, events.jsonl   as a run's: one owner (engine.workflows.study_owner), commands, acks
      journal.md       the study's record in the notes' style
      trial-<value>/   one ordinary run folder per trial

Trials, their parameters, states and scores live in the Optuna study: the seven values are enqueued trials, a
worker claims one (WAITING → RUNNING, atomic in the storage), trains it and tells its mAP. The spec and the
study's control state (running / paused / stopping) are also the Optuna study's user attributes, so a worker on
another machine needs only the storage URL and the study's name. A trial that was interrupted stays RUNNING in
Optuna with status "stopped"; the owner hands it out again and it resumes from its checkpoint.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import config as C
from ..run import rundir, runctl
from ..files import write_atomic

STUDY_JSON = rundir.STUDY
JOURNAL_FILE = "optuna.journal"
FOREVER = 1_000_000_000  # eval.interval of a trial: one evaluation, at its end
STALE_S = 120.0  # a trial on another machine whose heartbeat is older than this is handed out again
HEARTBEAT_S = 10.0
PARAM_RANGE = (1e-12, 1e12)  # the log-scale distribution every grid value falls in

# study-level keys `ctl STUDY set` may change (they apply to trials that start after the change)
STUDY_KEYS = ("study.trial_steps", "study.trial_minutes", "study.slides", "study.workers")


class StudyError(ValueError):
    pass


@dataclass
class StudySpec:
    kind: str  # "sweep": a seven-stars sweep of ``key``; "arms": the named configs of ``arms``, value i = arms[i - 1]
    key: str  # the swept key ("arm" for arms)
    values: list[float]
    trial_steps: int | None
    trial_minutes: float | None
    name: str  # the Optuna study's name
    config: dict[str, Any]  # the base config every trial starts from
    storage: str = ""  # "" = the folder's journal file; else a database URL or a journal file path
    slides: int = 0  # windows the owner may still slide on its own when the best sits at an edge
    workers: int = 1  # trials at once on this machine (CPU: cores shared out; GPU: one per device)
    devices: list[str] = field(default_factory=list)  # e.g. ["cuda:0", "cuda:1"]; [] = every visible GPU / cpu
    created: float = field(default_factory=time.time)
    format: int = 2
    arms: list[dict[str, Any]] = field(default_factory=list)  # [{"name": "giou", "set": {key: value}}], kind "arms"
    # 0: every trial runs to its end. N: every trial is also scored at each N-th epoch, and one that scores below
    # half the best figure of the others (or of ``prune_refs``, run folders outside the study) at the same step
    # stops there, "pruned" (engine.workflows.study_prune)
    prune_epoch: int = 0
    prune_refs: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> C.Config:
        return C.validate(self.config, f"{self.name}: base config")

    def label(self, value: float) -> str:
        """How a trial is named: its arm's name, or the swept value."""
        return self.arms[int(value) - 1]["name"] if self.arms else value_name(value)

    def run_name(self, value: float) -> str:
        return f"trial-{self.label(value)}"

    def budget_text(self) -> str:
        return f"{self.trial_steps} steps" if self.trial_steps else f"{self.trial_minutes:g} min"


def value_name(value: float) -> str:
    return f"{value:g}"


def trial_config(spec: StudySpec, value: float, device: str | None = None) -> C.Config:
    """The config of the trial at ``value``: one evaluation at its end (and each ``prune_epoch``-th epoch), its
    budget as its own length."""
    chosen = dict(spec.arms[int(value) - 1]["set"]) if spec.arms else {spec.key: _typed(spec, value)}
    updates: dict[str, Any] = chosen | {"eval.interval": spec.prune_epoch or FOREVER, "train.devices": 1}
    if spec.trial_steps:
        updates["train.max_steps"] = spec.trial_steps
    else:  # planned to end in the trial's minutes, its lr decay placed there (engine.train.lr_plan)
        updates["train.time_budget_min"] = spec.trial_minutes
    if device:
        updates["train.device"] = device
    return C.with_updates(spec.cfg, updates, f"{spec.kind} trial {spec.key}={spec.label(value)}")


def _typed(spec: StudySpec, value: float) -> Any:
    current = C.flatten(spec.cfg)[spec.key]
    return int(value) if isinstance(current, int) and value == int(value) else value


def check_key(cfg: C.Config, key: str) -> None:
    flat = C.flatten(cfg)
    if key not in flat:
        raise StudyError(f"{key}: unknown key; a sweep takes a numeric dotted key such as train.base_lr or "
                         "loss.loss_scale")
    v = flat[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise StudyError(f"{key} = {v!r} is not numeric; a seven-stars sweep needs a numeric key")


# --- storage ------------------------------------------------------------------------------------------------------

def open_storage(url: str, folder: Path | None = None):
    """Optuna's storage: the journal file in ``folder`` (url ""), a journal file path, or a database URL."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not url:
        if folder is None:
            raise StudyError("a study's own journal storage needs its folder")
        return JournalStorage(JournalFileBackend(str(Path(folder) / JOURNAL_FILE)))
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    return JournalStorage(JournalFileBackend(url))


def param_distribution():
    """The log-scale distribution a grid value is recorded under in Optuna (any value of the half-decade grid)."""
    from optuna.distributions import FloatDistribution

    return FloatDistribution(*PARAM_RANGE, log=True)


class Study:
    """A study as its storage holds it: spec, control state and trials. Any process may hold one; only the
    owner changes the control state, only the worker that claimed a trial tells its result."""

    def __init__(self, storage, name: str, folder: Path | None = None):
        self.storage, self.name, self.folder = storage, name, (Path(folder) if folder else None)
        try:
            self.id = storage.get_study_id_from_name(name)
        except KeyError:
            raise StudyError(f"no study named {name!r} in this storage") from None

    # --- creating and opening ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: Path | str, spec: StudySpec) -> "Study":
        """A new study in ``folder`` (which must hold none yet): spec saved, the values enqueued."""
        import optuna

        folder = Path(folder)
        if (folder / STUDY_JSON).exists():
            raise StudyError(f"{folder} already holds a study; resume it: nanxi-tune resume {folder}")
        if spec.arms:
            spec = replace(spec, kind="arms", key="arm", values=[float(i + 1) for i in range(len(spec.arms))],
                           slides=0)
            names = [str(arm.get("name", "")) for arm in spec.arms]
            if len(set(names)) != len(names) or not all(re.fullmatch(r"[A-Za-z0-9_.+-]+", n) for n in names):
                raise StudyError(f"arms {names}: give each arm a distinct name of letters, digits, _ . + -")
        else:
            check_key(spec.cfg, spec.key)
        if (spec.trial_steps is None) == (spec.trial_minutes is None):
            raise StudyError("give exactly one trial budget: trial steps or trial minutes")
        if spec.prune_epoch < 0:
            raise StudyError(f"prune epoch = {spec.prune_epoch}: give 0 (no pruning) or an epoch count")
        if spec.trial_steps is not None and spec.trial_steps < 1:
            raise StudyError(f"trial steps = {spec.trial_steps}: need at least 1 step")
        if spec.trial_minutes is not None and not spec.trial_minutes > 0:
            raise StudyError(f"trial minutes = {spec.trial_minutes}: need a positive duration")
        for v in spec.values:  # a value the key refuses is refused before anything is written
            if not v > 0:
                raise StudyError(f"{spec.key} = {v}: a seven-stars sweep takes positive grid values")
            trial_config(spec, v)
        folder.mkdir(parents=True, exist_ok=True)
        storage = open_storage(spec.storage, folder)
        optuna.create_study(storage=storage, study_name=spec.name, direction="maximize")
        study = cls(storage, spec.name, folder)
        study.storage.set_study_user_attr(study.id, "spec", asdict(spec))
        study.set_control("new")
        study.enqueue(spec.values)
        _write_json(folder / STUDY_JSON, asdict(spec))
        return study

    @classmethod
    def open(cls, folder: Path | str) -> "Study":
        folder = Path(folder)
        spec = read_spec(folder)
        return cls(open_storage(spec.storage, folder), spec.name, folder)

    @classmethod
    def connect(cls, storage_url: str, name: str) -> "Study":
        """A study by its storage and name (a worker on another machine)."""
        return cls(open_storage(storage_url), name)

    # --- spec and control ----------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return self.storage.get_study_user_attrs(self.id)

    @property
    def spec(self) -> StudySpec:
        data = self.attrs.get("spec")
        if data is None:
            raise StudyError(f"study {self.name!r} holds no nanxi-tune spec")
        return StudySpec(**data)

    def set_spec(self, spec: StudySpec) -> None:
        self.storage.set_study_user_attr(self.id, "spec", asdict(spec))
        if self.folder is not None:
            _write_json(self.folder / STUDY_JSON, asdict(spec))

    def control(self) -> str:
        """What the owner asks of every trial: running, paused or stopping ("new"/"finished"/"stopped" at rest)."""
        return str(self.attrs.get("control", "new"))

    def set_control(self, state: str) -> None:
        self.storage.set_study_user_attr(self.id, "control", state)

    # --- trials ------------------------------------------------------------------------------------------------
    def trials(self) -> list:
        return self.storage.get_all_trials(self.id, deepcopy=False)

    def enqueue(self, values: list[float]) -> list[float]:
        """Enqueue the values not yet in the study (as WAITING trials); returns those added."""
        from optuna.trial import create_trial, TrialState

        seen = {float(t.user_attrs.get("value", -1)) for t in self.trials()}
        added = []
        for v in values:
            if float(v) in seen:
                continue
            template = create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {self.spec.key: v}},
                                    user_attrs={"value": float(v), "run": self.spec.run_name(v),
                                                "status": "pending"})
            self.storage.create_new_trial(self.id, template)
            added.append(float(v))
        return added

    def claim(self) -> Any | None:
        """Take the next WAITING trial (atomic: two workers never get the same one), its param set."""
        from optuna.trial import TrialState

        for t in self.trials():
            if t.state != TrialState.WAITING:
                continue
            if self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                dist = param_distribution()
                v = float(t.user_attrs["value"])
                self.storage.set_trial_param(t._trial_id, self.spec.key, dist.to_internal_repr(v), dist)
                return self.storage.get_trial(t._trial_id)
        return None

    def has_waiting(self) -> bool:
        """A trial is left for a worker to claim."""
        from optuna.trial import TrialState

        return any(t.state == TrialState.WAITING for t in self.trials())

    def trial(self, number: int):
        return self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(self.id, number))

    def mark(self, trial, **attrs: Any) -> None:
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(trial._trial_id, k, v)

    def tell(self, trial, state: str, value: float | None) -> None:
        from optuna.trial import TrialState

        if state == "finished" and value is not None:
            self.storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [float(value)])
        elif state == "pruned":
            self.storage.set_trial_state_values(trial._trial_id, TrialState.PRUNED)
        else:
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def orphans(self, local_live: set[int]) -> list:
        """RUNNING trials no worker runs any more: here, their run folder has no live owner (and no child of this
        owner runs them); elsewhere, their heartbeat is older than STALE_S."""
        from optuna.trial import TrialState

        out = []
        for t in self.trials():
            if t.state != TrialState.RUNNING or t.number in local_live:
                continue
            run = t.user_attrs.get("run_dir")
            if ran_here(t.user_attrs):
                if not run or not runctl.status(Path(run)).alive:
                    out.append(t)
            elif time.time() - float(t.user_attrs.get("heartbeat", 0)) > STALE_S:
                out.append(t)
        return out


def ran_here(attrs: dict[str, Any]) -> bool:
    """A trial this machine ran (or that no worker marked yet); a worker elsewhere has its own heartbeat."""
    return attrs.get("host") in (None, socket.gethostname())


# --- reading a study folder (no Optuna import: the Runs tab lists many) ---------------------------------------------

def read_spec(folder: Path | str) -> StudySpec:
    path = Path(folder) / STUDY_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{folder}: not a study folder (no {STUDY_JSON})") from None
    except (OSError, ValueError) as err:
        raise StudyError(f"{path}: unreadable ({err}); the study's trials are still in its storage") from None
    try:
        return StudySpec(**data)
    except TypeError as err:
        raise StudyError(f"{path}: not a study spec of this version ({err})") from None


def is_study(path: Path | str) -> bool:
    return (Path(path) / STUDY_JSON).is_file()


def list_studies(root: Path | str = "runs") -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_study(p)), key=lambda p: p.stat().st_mtime, reverse=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1), fsync=True)
