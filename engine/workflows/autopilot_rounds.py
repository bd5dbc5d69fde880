"""The autopilot's rounds (engine.workflows.autopilot walks them in order): each reads the record so far, does its
work — a cut, a reading, a probe, a study, a computation, a run — and leaves its choice, table and reason in its
``RoundState``. A mixin of ``AutopilotOwner``, which supplies the record (``ap``, ``folder``), the control
(``_wait``, ``_check``, ``_stop``) and the events."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import config as C
from ..run import rundir
from ..run.events import Event
from . import autopilot_plan as P
from .autopilot_rank import choose, pruned_text, short_text, step_ratios, too_short_rows

PROBE_STEPS = 12
PROBE_IMAGES = 8  # held-out images the probe evaluates (its step time is what counts)
NORMALIZE_SAMPLES = 300


@dataclass(frozen=True)
class AutopilotProgress(Event):
    """A round started, done or skipped; the plan made; the final figures."""
    kind = "autopilot"
    what: str  # round_started, round_done, round_skipped, planned, finished
    round: str
    message: str
    time: float = field(default_factory=time.time)


class Stopped(Exception):
    """A stop (command or signal, or a round's study that stopped itself: its reason the argument) ended the walk
    inside a round; resume goes on from it."""


class Rounds:
    # --- configs ----------------------------------------------------------------------------------------------------
    def recipe_config(self) -> C.Config:
        """The base with every choice so far (the user's data)."""
        return C.with_updates(self.base, self.ap.recipe, "autopilot recipe")

    def search_config(self) -> C.Config:
        """What trials train: the recipe on the fit part, scored on the held-out part (never on val)."""
        return C.with_updates(self.recipe_config(), {"data.train": self.ap.fit, "data.val": self.ap.holdout,
                                                     "eval.val_data_mode": "full"}, "autopilot search")

    # --- rounds -----------------------------------------------------------------------------------------------------
    def _split(self, r: P.RoundState) -> None:
        from ..data.dataset import resolve
        from ..data.split import split_train

        base = self.base
        images, ann = resolve(base.data.train, "train", base)
        fit, held = split_train(ann, self.folder / "data", self.ap.spec.holdout, self.ap.spec.seed, images)
        self.ap.fit, self.ap.holdout, self.ap.train_images = str(fit.resolve()), str(held.resolve()), str(images)
        r.folder = "data"
        r.why = (f"{ann.name} cut once (seed {self.ap.spec.seed}): {_count(fit)} images to fit, {_count(held)} "
                 f"held out ({self.ap.spec.holdout:.0%}); every trial is scored on the held-out part")

    def _profile(self, r: P.RoundState) -> None:
        from ..data.profile import proposals, profile

        cfg = self.recipe_config()
        p = profile(self.ap.fit, cfg.preprocess.input_size)
        self.ap.profile = p.to_json()
        chosen = proposals(p, cfg)
        r.choice = {x.key: x.value for x in chosen}
        r.rows = [{"label": x.key, "value": x.value, "why": x.why} for x in chosen]
        r.why = p.text() + (". Starting values: " + "; ".join(f"{x.key} = {x.value}" for x in chosen) if chosen
                            else ". The preset's starting values fit it")

    def _probe(self, r: P.RoundState) -> None:
        cfg = C.with_updates(self.search_config(), {"train.max_steps": PROBE_STEPS, "train.time_budget_min": 0,
                                                    "eval.interval": 1_000_000_000, "eval.val_data_mode": "qmv",
                                                    "eval.qmv": PROBE_IMAGES}, "autopilot probe")
        run = self.folder / "probe"
        r.folder = "probe"
        self._train(run, cfg)
        times = [(m["step"], m["time"]) for m in rundir.read_metrics(run) if m.get("split") == "train"]
        if len(times) < 3:
            raise P.AutopilotError(f"{run}: the probe logged {len(times)} steps; see its events.jsonl")
        (s0, t0), (s1, t1) = times[1], times[-1]  # the first step warms caches: not a speed
        step_s = (t1 - t0) / max(1, s1 - s0)
        self._replan(step_s)
        r.why = f"{step_s:.3f} s a step ({s1 - s0} steps measured). {self.ap.plan['why']}"

    def _lr(self, r: P.RoundState) -> None:
        from ..grid import grid_index, grid_value

        lr = self.recipe_config().train.base_lr
        i = grid_index(lr)
        values = [grid_value(i + j - P.LR_WINDOW // 2) for j in range(P.LR_WINDOW)]
        values.sort(key=lambda v: abs(grid_index(v) - i))  # the recipe's lr first: the others are cut against it
        best = self._study(r, dict(kind="sweep", key="train.base_lr", values=values, slides=1, keep=values[0]))
        r.choice = {"train.base_lr": best["value"]}
        r.best = self._best_record(r, best)

    def _shape_arms(self) -> list[dict[str, Any]]:
        cfg = self.recipe_config()
        other = "l1" if cfg.loss.shape_loss == "giou" else "giou"
        arms = [{"name": "as-is", "set": {}}, {"name": other, "set": {"loss.shape_loss": other}}]
        if cfg.loss.shape_samples == "centre":
            arms.append({"name": "gaussian", "set": {"loss.shape_samples": "gaussian"}})
        return arms

    def _capacity_arms(self) -> list[dict[str, Any]]:
        cfg = self.recipe_config()
        b = cfg.backbone
        arms = [{"name": "as-is", "set": {}}]
        if b.name == "nanxi":
            arms.append({"name": f"width-{min(512, 2 * b.width)}", "set": {"backbone.width": min(512, 2 * b.width)}})
            arms.append({"name": "resnet18", "set": {"backbone.name": "resnet18"}})
        else:
            arms.append({"name": "nanxi", "set": {"backbone.name": "nanxi"}})
        return arms

    def _kept_capacity_arms(self) -> list[dict[str, Any]]:
        """The capacity arms but those left out as too slow to rank at equal time."""
        return [a for a in self._capacity_arms() if a["name"] not in self.ap.left_out]

    def _arm_counts(self) -> dict[str, int]:
        """The shape and capacity rounds' trials for the recipe as it stands (the plan shares the budget by them)."""
        return {"shape": len(self._shape_arms()), "capacity": len(self._kept_capacity_arms())}

    def _shape(self, r: P.RoundState) -> None:
        self._arms_round(r, self._shape_arms())

    def _capacity(self, r: P.RoundState) -> None:
        if not self.ap.spec.trial_steps and not self.ap.step_ratios and not (self.folder / "round-capacity").exists():
            # equal time: an arm too slow to train enough steps in a trial cannot change the answer (decided once,
            # on the plan as it stands; the trial length is kept, the time of the arms left out goes to the final run)
            every = self._capacity_arms()
            self.ap.step_ratios = step_ratios(self.search_config(), every)
            _, self.ap.left_out = P.rankable_arms(every, self.ap.step_ratios, float(self.ap.plan["trial_s"]),
                                                  float(self.ap.plan["step_s"]))
            self._replan(keep_trial=True)
        arms = self._kept_capacity_arms()
        left_out = list(self.ap.left_out.values())
        if len(arms) < 2:
            r.best = self._carried(r)
            r.why = "; ".join(left_out) + ": the recipe's capacity kept, its time given to the final run"
            return
        self._arms_round(r, arms)
        r.why = "; ".join([r.why] + left_out)

    def _arms_round(self, r: P.RoundState, arms: list[dict[str, Any]]) -> None:
        """A round of named arms, the first the recipe as it is. That one is the previous round's best trial when
        it trained for as long as this round's trials will (the same config: it is not trained again)."""
        carried = self._carried(r)
        trained = arms[1:] if carried else arms
        best = self._study(r, dict(kind="arms", key="arm", values=[], arms=trained,
                                   refs=[carried["run_dir"]] if carried.get("run_dir") else [],
                                   **({} if carried else {"keep": 1})))  # arm 1: the recipe as it is
        if best is not None:
            r.choice, r.best = dict(trained[int(best["value"]) - 1]["set"]), self._best_record(r, best)
        if carried:
            trials = list(r.rows)
            r.rows.insert(0, {"label": f"as-is (round {carried['round']}: {carried['label']})", "mAP": carried["mAP"],
                              "AP50": carried["AP50"], "steps": carried["steps"], "status": "carried"})
            if best is None or carried["mAP"] >= best["mAP"]:  # a tie keeps the recipe
                r.choice, r.best = {}, carried
            r.why = (f"best {r.rows[0]['label'] if not r.choice else best['label']} (held-out mAP "
                     f"{r.best['mAP']:.4f}) of {', '.join(str(x['label']) for x in r.rows)}; as-is is round "
                     f"{carried['round']}'s best trial, not trained again{pruned_text(trials)}"
                     f"{short_text(too_short_rows(trials, self._too_short))}")

    def _normalize(self, r: P.RoundState) -> None:
        from . import normalization

        cfg = self.search_config()
        if cfg.normalize.source == "computed":
            r.why = "normalize.mean/std were computed already (normalize.source = computed): kept"
            return
        stats = normalization.compute(cfg, NORMALIZE_SAMPLES, cfg.train.seed)
        if not normalization.finite(stats):
            r.why = "the statistics were not finite: the defaults kept"
            return
        r.choice = normalization.updates(stats)
        r.why = (f"over {stats.samples} augmented fit samples: mean {r.choice['normalize.mean']}, std "
                 f"{r.choice['normalize.std']}")

    def final_config(self, updates: dict[str, Any]) -> C.Config:
        """The recipe with ``updates`` (length, start) for the final run on the whole train split, scored on val —
        the files the user's data.train / data.val name at the base config, the ones the search cut: a synthetic set
        is drawn at the input size, and a recipe with another input size must not train or score on another set."""
        from ..data.dataset import resolve

        base = self.base
        data = {f"data.{s}": str(resolve(getattr(base.data, s), s, base)[1]) for s in ("train", "val")}
        cfg = C.with_updates(self.recipe_config(), updates | data | {"train.epochs": 100000}, "autopilot final run")
        if cfg.eval.val_data_mode == "full" and _count(Path(data["data.val"])) > cfg.eval.qmv:
            # the notes' round 1: the curve on QMV while it trains; the post round scores the full val once
            cfg = C.with_updates(cfg, {"eval.val_data_mode": "qmv"}, "autopilot final run")
        return cfg

    def _final(self, r: P.RoundState) -> None:
        if self.ap.spec.final_steps:
            length = f"{self.ap.spec.final_steps} steps"
            updates = {"train.max_steps": self.ap.spec.final_steps, "train.time_budget_min": 0}
        else:
            left_s = self.ap.spec.budget_min * 60 - self.ap.used_s - self.ap.plan.get("post_s", 0)
            minutes = round(max(0.1, left_s / 60), 3)
            length = f"{minutes} min"
            updates = {"train.time_budget_min": minutes}
        start = self._warm_start()
        if start:  # the search's time is not lost: the final run goes on from its best trial's weights
            updates["train.init_from"] = start
        cfg = self.final_config(updates)
        r.folder = "final"
        self._train(self.folder / "final", cfg)
        trained = C.load(self.folder / "final" / rundir.CONFIG).train  # as it trained: a resumed run keeps its own
        length = (f"{trained.time_budget_min:g} min" if trained.time_budget_min else f"{trained.max_steps} steps")
        vals = [m for m in rundir.read_metrics(self.folder / "final") if m.get("split") == "val"]
        r.rows = [{"label": f"step {m['step']}", "mAP": m.get("mAP"), "AP50": m.get("AP50"), "AP75": m.get("AP75")}
                  for m in vals[-5:]]
        r.why = f"the recipe on the whole train split for {length}" + (
            f", starting from the search's best trial ({start})" if start else ", from random weights")
        if cfg.eval.val_data_mode == "qmv":
            r.why += (f"; while it trains, val is scored on QMV ({cfg.eval.qmv} of its {_count(Path(cfg.data.val))} "
                      f"images, the notes' round 1), the full val once at the end")

    def _post(self, r: P.RoundState) -> None:
        from ..evaluation.evaluate_run import evaluate_run
        from . import tune_post

        run = self.folder / "final"
        cache = tune_post.cache_outputs(run, "last", updates={"data.val": self.ap.holdout,
                                                              "eval.val_data_mode": "full"})
        result = tune_post.tune(run, which="last", cache=cache, stop=self._stop)
        self._check()
        r.choice = result.best_updates()
        self.ap.recipe.update(r.choice)  # before the recipe is saved below
        tune_post.apply(result)  # the final run's config.toml: its val figures below use them
        m = evaluate_run(run, "last", {"eval.val_data_mode": "full"})
        keep = ("mAP", "AP50", "AP75", "APs", "APm", "APl")
        self.ap.final = {k: float(m[k]) for k in keep if k in m}
        C.save(self._recipe_preset(), self.folder / "recipe.toml")
        flip, quality, vote = (result.extra.get(k) for k in ("flip_test", "quality_weight", "shape_vote"))
        r.rows = [{"label": "held-out, the run's values", "mAP": result.default["mAP"]},
                  *([{"label": "held-out, flip test (翻转测试)", "mAP": flip["on"]}] if flip else []),
                  *([{"label": f"held-out, box quality (框质量) weight {quality['chosen']:g}",
                      "mAP": quality["mAP"][str(quality["chosen"])]}] if quality else []),
                  *([{"label": f"held-out, shape vote (邻格投票) p = {vote['chosen']:g}",
                      "mAP": vote["mAP"][str(vote["chosen"])]}] if vote else []),
                  {"label": "held-out, tuned", "mAP": result.best["mAP"]},
                  {"label": "val (last weights, tuned post-processing)", **self.ap.final}]
        r.why = (f"{tune_post.fmt_point(result.best)} on the held-out part; val mAP {self.ap.final['mAP']:.4f} "
                 f"AP50 {self.ap.final['AP50']:.4f}; the recipe: {self.folder / 'recipe.toml'}")

    # --- helpers ----------------------------------------------------------------------------------------------------
    def _recipe_preset(self) -> C.Config:
        name = self.folder.name
        return self.recipe_config().model_copy(update={"preset": name if name.startswith("autopilot")
                                                      else f"autopilot-{name}"})

    def _warm_start(self) -> str:
        """The last search round's chosen trial — the recipe's config, trained on the fit part — when its
        checkpoint is there ("" otherwise: the final run starts from random weights)."""
        best = [x.best for x in self._searched()]
        if not best or not best[-1].get("run_dir"):
            return ""
        from ..model.warm_start import checkpoint_of

        path = checkpoint_of(best[-1]["run_dir"])
        config = Path(best[-1]["run_dir"]) / rundir.CONFIG
        if not path.is_file() or not config.is_file():
            return ""
        layers = ("principles", "backbone", "neck", "head", "encode")
        trial, recipe = C.load(config), self.recipe_config()
        same = all(getattr(trial, g) == getattr(recipe, g) for g in layers)
        return str(path) if same else ""

    def _searched(self) -> list[P.RoundState]:
        """The search rounds done with a chosen trial, in the notes' order."""
        return [x for x in self.ap.rounds if x.name in P.SEARCH and x.status == "done" and x.best]

    def _trial_length(self) -> float:
        """What makes two trials comparable: their steps (``trial_steps`` set) or their seconds."""
        return float(self.ap.spec.trial_steps) if self.ap.spec.trial_steps else round(self.ap.plan["trial_s"], 1)

    def _best_record(self, r: P.RoundState, row: dict[str, Any]) -> dict[str, Any]:
        return {"round": r.name, "label": str(row["label"]), "mAP": row["mAP"], "AP50": row["AP50"],
                "steps": row["steps"], "run_dir": row.get("run_dir", ""), "length": self._trial_length()}

    def _carried(self, r: P.RoundState) -> dict[str, Any]:
        """The previous search round's best trial, as round ``r``'s "as-is" arm — when there is one and it trained
        for as long as ``r``'s trials will ({} otherwise: a budget change re-planned the length, or nothing ran)."""
        before = [x for x in self._searched() if P.SEARCH.index(x.name) < P.SEARCH.index(r.name)]
        if not before or before[-1].best.get("length") != self._trial_length():
            return {}
        return before[-1].best

    def _replan(self, step_s: float | None = None, keep_trial: bool = False) -> None:
        step_s = step_s or float(self.ap.plan.get("step_s", 0)) or 1.0
        left = [x.name for x in self.ap.rounds if x.name in P.SEARCH and x.status in ("pending", "running")]
        post_s = max(30.0, 0.03 * self.ap.spec.budget_min * 60)
        plan = P.make_plan(self.ap.spec, self.ap.used_s, step_s, left, post_s, self._arm_counts(),
                           carry_first=bool(self._searched()),
                           trial_s=float(self.ap.plan["trial_s"]) if keep_trial and self.ap.plan else None)
        done = [x for x in self.ap.plan.get("rounds", []) if x not in left]
        self.ap.plan = {**asdict(plan), "rounds": done + plan.rounds, "post_s": post_s}
        self._emit(AutopilotProgress("planned", "", plan.why))

    def _study(self, r: P.RoundState, what: dict[str, Any]) -> dict[str, Any] | None:
        """Run the round's study (created once; resumed as it is after a stop or a kill) and return its best row
        (None when ``what["refs"]``, the carried as-is, is given and no trial finished: cut half-way or failed)."""
        from .study import Study, StudySpec, is_study
        from .study_owner import StudyOwner
        from .study_results import table

        folder = self.folder / f"round-{r.name}"
        r.folder = folder.name
        if not is_study(folder):
            spec = StudySpec(what["kind"], what["key"], what["values"], self.ap.spec.trial_steps or None,
                             None if self.ap.spec.trial_steps else round(self.ap.plan["trial_s"] / 60, 4),
                             f"{self.folder.name}-{r.name}", self.search_config().model_dump(mode="json"),
                             slides=what.get("slides", 0), workers=self.ap.spec.workers, arms=what.get("arms", []),
                             prune_epoch=0 if r.name == "capacity" else self._prune_epoch(),
                             prune_refs=what.get("refs", []))
            Study.create(folder, spec)
        owner = StudyOwner(folder, callback=self.callback)
        self._current = {"study": folder, "owner": owner}
        self._wait(owner.run)
        if owner.stop_reason:  # it stopped itself (the code changed under it): so does the walk, resumable
            raise Stopped(owner.stop_reason)
        study = Study.open(folder)
        rows = table(study)
        r.rows = [{k: x[k] for k in ("label", "mAP", "AP50", "steps", "status")} for x in rows]
        best, short = choose(rows, self._too_short, what.get("keep"))
        kept = (f"; no trial trained {P.MIN_TRIAL_STEPS} steps: the recipe's {best['label']} kept"
                if best is not None and best in short else "")
        if best is None and what.get("refs"):
            return None  # no arm finished (cut against the carried as-is, or failed): the caller keeps the as-is
        if best is None:
            raise P.AutopilotError(f"{folder}: no trial finished; see its journal.md and the trials' events")
        r.why = (f"best {best['label']} (held-out mAP {best['mAP']:.4f}) of "
                 f"{', '.join(str(x['label']) for x in rows)}{pruned_text(rows)}{short_text(short)}{kept}")
        return best

    def _too_short(self, row: dict[str, Any]) -> bool:
        """A trial of minutes that trained fewer than ``MIN_TRIAL_STEPS`` steps (the machine slowed down after the
        probe): it cannot rank, as the plan would not have planned it (trials of ``--trial-steps`` are equal)."""
        return not self.ap.spec.trial_steps and int(row.get("steps") or 0) < P.MIN_TRIAL_STEPS

    def _prune_epoch(self) -> int:
        """The epoch half-way through a search trial: each trial is scored there and one far behind stops (0: a
        trial of under two epochs runs to its end). Not in the capacity round: its arms train at equal time, not
        equal steps, so a slower arm's lr decay comes at an earlier step and the same step is not the same point."""
        per_epoch = _count(Path(self.ap.fit)) // self.search_config().data.batch_size
        steps = self.ap.spec.trial_steps or float(self.ap.plan["trial_s"]) / max(float(self.ap.plan["step_s"]), 1e-9)
        return int(steps / 2 // per_epoch) if per_epoch else 0

    def _train(self, run: Path, cfg: C.Config) -> None:
        from .trial import train_trial

        box: dict[str, Any] = {}
        self._current = {"run": run, "box": box}
        end: dict[str, Any] = {}
        self._wait(lambda: end.setdefault("end", train_trial(run, cfg, on_trainer=lambda t: box.update(trainer=t))))
        e = end.get("end")
        if e is None or e.state == "stopped":
            raise Stopped()
        if e.state == "failed":
            raise P.AutopilotError(f"{run}: {e.error}")


def _count(coco_json: Path) -> int:
    import json

    return len(json.loads(Path(coco_json).read_text(encoding="utf-8"))["images"])
