"""The autopilot's record and its budget: what it was asked (spec), where each round stands (state), and how the
budget is shared between the search and the final run — pure data and arithmetic, no torch, no Optuna, so the
TUI and ``ctl`` read it freely.

::

    runs/<autopilot>/
      autopilot.json      spec + state, rewritten atomically at every step of the walk
      owner.lock, owner.json, control/, events.jsonl   as a run's: one owner, commands, acks
      journal.md          the notes' style: a heading per round, its table, the choice and why
      data/               the train split cut once into fit / held-out (val is never scored before the final run)
      probe/              a few steps that measure the step time the plan is made from
      round-lr/ round-shape/ round-capacity/   each a study (engine.workflows.study), its trials ordinary runs
      final/              the final run on the whole train split
      recipe.toml         the chosen recipe as a preset (``--preset runs/<autopilot>/recipe.toml``)
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..run import rundir

AUTOPILOT_JSON = rundir.AUTOPILOT
ROUNDS = ("split", "profile", "probe", "lr", "shape", "capacity", "normalize", "final", "post")
SEARCH = ("lr", "shape", "capacity")  # the study rounds, in the notes' order; the budget drops them from the end
TITLES = {"split": "cut the train split: fit / held-out", "profile": "read the data", "probe": "measure the step time",
          "lr": "learning rate: seven stars (七星连珠法)", "shape": "shape branch: loss and samples",
          "capacity": "capacity at equal time", "normalize": "mean/std after augmentation (样本增广之后进行计算)",
          "final": "final run on the whole train split", "post": "post-processing on the held-out part, val scored"}
FINAL_SHARE = 0.5  # of the whole budget, for the final run
MIN_TRIAL_STEPS = 60  # a trial shorter than this cannot rank its values: the round is dropped instead
MAX_TRIAL_STEPS = 3000  # a longer trial ranks no better: the rest goes to the final run
LR_WINDOW = 3  # values of the first lr window (centred on the preset's); one slide may add one more
BUDGET_KEY = "autopilot.budget_min"
MAX_BUDGET_MIN = 525600.0  # the study-level key `ctl AUTOPILOT set` takes


class AutopilotError(ValueError):
    pass


def parse_budget(text: str) -> float:
    """"90m", "12h", "2d" or plain minutes → minutes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd]?)\s*", str(text))
    if not m:
        raise AutopilotError(f"budget {text!r}: give a duration such as 90m, 12h or 2d (a plain number is minutes)")
    if float(m.group(1)) <= 0:
        raise AutopilotError(f"budget {text!r}: must be more than 0, such as 90m, 12h or 2d")
    minutes = float(m.group(1)) * {"": 1, "m": 1, "h": 60, "d": 1440}[m.group(2)]
    if minutes > MAX_BUDGET_MIN:
        raise AutopilotError(f"budget {text!r}: at most 365 days (a run's train.time_budget_min ceiling)")
    return minutes


def budget_text(minutes: float) -> str:
    if minutes >= 2880:
        return f"{minutes / 1440:g} d"
    return f"{minutes / 60:g} h" if minutes >= 120 else f"{minutes:.1f} min"


@dataclass
class AutopilotSpec:
    preset: str
    config: dict[str, Any]  # the base: the preset and the user's --set (data.train / data.val the user's)
    budget_min: float
    holdout: float = 0.2
    seed: int = 0
    workers: int = 1
    trial_steps: int = 0  # 0: search trials planned in minutes from the budget; N: every trial N steps
    final_steps: int = 0  # 0: the final run fills the rest of the budget; N: N steps
    rounds: list[str] = field(default_factory=lambda: list(SEARCH))  # the search rounds to walk
    created: float = field(default_factory=time.time)
    format: int = 1


@dataclass
class RoundState:
    name: str
    status: str = "pending"  # pending, running, done, skipped
    folder: str = ""  # its study or run folder, relative to the autopilot's
    choice: dict[str, Any] = field(default_factory=dict)  # the updates it chose
    why: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)  # its table: label, mAP, AP50, AP75, steps, status
    seconds: float = 0.0
    # a search round's chosen trial (label, mAP, AP50, steps, run_dir, trial_s): the next round's "as-is" arm, and
    # the weights the final run starts from
    best: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    step_s: float
    search_s: float
    trial_s: float
    final_s: float
    rounds: list[str]  # the search rounds that fit
    why: str


@dataclass
class Autopilot:
    spec: AutopilotSpec
    rounds: list[RoundState] = field(default_factory=lambda: [RoundState(n) for n in ROUNDS])
    used_s: float = 0.0  # seconds the owner walked (paused and stopped time not counted)
    fit: str = ""
    holdout: str = ""
    train_images: str = ""
    profile: dict[str, Any] = field(default_factory=dict)
    step_ratios: dict[str, float] = field(default_factory=dict)  # capacity arms' step time over the recipe's
    left_out: dict[str, str] = field(default_factory=dict)  # capacity arms that cannot rank at equal time: why
    plan: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)  # the chosen updates over the base config
    final: dict[str, Any] = field(default_factory=dict)  # the final run's val figures

    def round(self, name: str) -> RoundState:
        return next(r for r in self.rounds if r.name == name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Autopilot":
        d = dict(d)
        spec = AutopilotSpec(**d.pop("spec"))
        rounds = [RoundState(**r) for r in d.pop("rounds")]
        return cls(spec, rounds, **d)


def save(folder: Path | str, ap: Autopilot) -> None:
    write_atomic(Path(folder) / AUTOPILOT_JSON, json.dumps(ap.to_json(), indent=1), fsync=True)


def load(folder: Path | str) -> Autopilot:
    path = Path(folder) / AUTOPILOT_JSON
    try:
        return Autopilot.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise AutopilotError(f"{folder}: not an autopilot folder (no {AUTOPILOT_JSON})") from None
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise AutopilotError(f"{path}: unreadable ({err}); its rounds' studies and runs are still in the "
                             "folder") from None


def is_autopilot(path: Path | str) -> bool:
    return (Path(path) / AUTOPILOT_JSON).is_file()


def trials_of(name: str, arms: dict[str, int] | None = None) -> int:
    """Trials a search round may train (the lr round: its window and one slide; ``arms``: the shape and capacity
    rounds' arm counts for the recipe at hand, three each by default)."""
    return {"lr": LR_WINDOW + 1, "shape": 3, "capacity": 3, **(arms or {})}[name]


def rankable_arms(arms: list[dict[str, Any]], ratios: dict[str, float], trial_s: float,
                  step_s: float) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The capacity round's arms that can rank at equal time, and why each other one is left out: an arm whose
    step takes ``ratios[name]`` × the recipe's would train fewer than ``MIN_TRIAL_STEPS`` steps in ``trial_s`` — it
    cannot change the answer, and its time goes to the arms that can. The first arm (the recipe as it is) stays."""
    kept, why = arms[:1], {}
    for arm in arms[1:]:
        ratio = ratios.get(arm["name"], 1.0)
        steps = trial_s / max(step_s * ratio, 1e-9)
        if steps >= MIN_TRIAL_STEPS:
            kept.append(arm)
        else:
            why[arm["name"]] = (f"{arm['name']} left out: a step {ratio:.1f}× the recipe's, {steps:.0f} steps in "
                                f"the {trial_s:.0f} s trial (fewer than {MIN_TRIAL_STEPS} cannot rank)")
    return kept, why


def make_plan(spec: AutopilotSpec, used_s: float, step_s: float, search_left: list[str],
              post_s: float = 0.0, arms: dict[str, int] | None = None, carry_first: bool = False,
              trial_s: float | None = None) -> Plan:
    """Share what is left of the budget: the final run gets ``FINAL_SHARE`` of the whole budget (or what is left
    after the search, if more); the search the rest, equally per trial that ranks. A search round whose trials would
    be shorter than ``MIN_TRIAL_STEPS`` steps is dropped, the last first (capacity, then shape, then lr); a trial
    longer than ``MAX_TRIAL_STEPS`` gives its surplus to the final run.

    Each round after the first ranks its "as-is" arm by the previous round's best trial (the same config, trained
    for the same time) instead of training it again: those trials rank but are not trained, and their time goes to
    the final run (``carry_first``: a search round is done already, so the first left carries too). ``trial_s``
    keeps the trial length the search started with (a carried row ranks only against trials as long as it was)."""
    budget_s = spec.budget_min * 60.0
    left = max(0.0, budget_s - used_s - post_s)
    final_floor = min(left, FINAL_SHARE * budget_s)
    search_s = left - final_floor
    rounds = [r for r in SEARCH if r in search_left and r in spec.rounds]
    why = [f"budget {budget_text(spec.budget_min)}, {used_s / 60:.1f} min used, "
           f"{post_s / 60:.1f} min kept for post-processing and the final evaluation; {step_s:.3f} s a step"]

    def carried(kept: list[str]) -> int:
        return max(0, len(kept) - 1) + (1 if kept and carry_first else 0)

    if spec.trial_steps or trial_s:
        trial_s = spec.trial_steps * step_s if spec.trial_steps else float(trial_s or 0.0)
        n = sum(trials_of(r, arms) for r in rounds) - carried(rounds)
        search_s = n * trial_s
        length = f"{spec.trial_steps} steps each (set)" if spec.trial_steps else f"of {trial_s:.0f} s (kept)"
        why.append(f"search trials {length}, {n} at most: {search_s / 60:.1f} min" if rounds else
                   "no search round left: the rest of the budget trains the final run")
        return Plan(step_s, search_s, trial_s, max(0.0, left - search_s), rounds, "; ".join(why))
    while rounds:
        n = sum(trials_of(r, arms) for r in rounds)
        trial_s = search_s / n
        if trial_s >= MIN_TRIAL_STEPS * step_s:
            break
        why.append(f"{rounds[-1]} dropped: {n} trials in {search_s / 60:.1f} min would be {trial_s / step_s:.0f} "
                   f"steps each (fewer than {MIN_TRIAL_STEPS} cannot rank)")
        rounds.pop()
    if not rounds:
        return Plan(step_s, 0.0, 0.0, left, [], "; ".join(why + ["no search: the whole budget trains the final "
                                                                  "run"]))
    n = sum(trials_of(r, arms) for r in rounds)
    trial_s = min(search_s / n, MAX_TRIAL_STEPS * step_s)
    trained = n - carried(rounds)
    final_s = left - trained * trial_s
    carry = (f", {n - trained} of them the previous round's best, not trained again" if trained < n else "")
    why.append(f"search {trained * trial_s / 60:.1f} min: {n} trials ({', '.join(rounds)}) of {trial_s:.0f} s ≈ "
               f"{trial_s / step_s:.0f} steps{carry}; final run {final_s / 60:.1f} min "
               f"({'half the budget' if final_s <= final_floor + 1 else 'half the budget and what the search left'})")
    return Plan(step_s, trained * trial_s, trial_s, final_s, rounds, "; ".join(why))
