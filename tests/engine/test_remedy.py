"""Remedies that work: clip only from a healthy window, no drifting re-fires, pinned rewind checkpoints, the lr
proven by a seven-stars trial downward, and `nanxi-tune remedy` (the same engine call as the TUI's r)."""

from __future__ import annotations

import json
import math

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import checkpoint as ckpt_io
from nanxi_tune.engine.diagnosis import pins
from nanxi_tune.engine.workflows import lr_trial, remedy
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.diagnosis.rulebook import Finding
from nanxi_tune.engine.diagnosis.watcher import Watcher, material_change
from nanxi_tune.engine.diagnosis.rules import RULES, Rule
from nanxi_tune.engine.train.trainer import Trainer
from nanxi_tune.cli.main import main
from conftest import tiny
from test_diagnostics import blown_up, trace

pytestmark = pytest.mark.usefixtures("one_thread")

SPE = 6  # tiny(): 48 train images at batch 8


# --- the rules: clip from a healthy window only; no drifting series ------------------------------------------------

def spiked(lines: list[dict]) -> list[dict]:
    for i in (100, 130, 160, 170):
        lines[i] = {**lines[i], **{k: lines[i][k] * 4 for k in ("loss_map", "loss_offset", "loss_shape")}}
    return lines


def test_spike_remedy_on_a_never_healthy_run_proposes_an_lr_not_a_clip():
    rule = RULES["loss-spikes"].fn
    hot = spiked(trace(epochs=6, level=blown_up, noise=0.1, lr=1.0))
    f = rule(C.with_updates(C.Config(), {"train.base_lr": 1.0}), hot, {})
    assert f is not None and f.remedy["set"] == {"train.base_lr": 0.3}
    assert f.evidence["healthy_epoch"] is None and "no healthy window" in f.remedy["text"]
    # the same spikes on a run that learned first: clip at the healthy epoch's 90th percentile (~25 × 1.5)
    ok = rule(C.Config(), spiked(trace(epochs=6, seed=4)), {})
    clip = ok.remedy["set"]["train.grad_clip"]
    assert set(ok.remedy["set"]) == {"train.grad_clip"} and 25 < clip < 80
    assert ok.evidence["healthy_steps"][1] < ok.evidence["first_spike_step"]


def finding(clip: float, ratio: float) -> Finding:
    return Finding("loss-spikes", "warning", "x", "m", {"max_ratio": ratio}, {"set": {"train.grad_clip": clip},
                   "resume_from_step": 10, "text": f"clip at {clip:g}"}, 100)


def test_a_fired_rule_does_not_refire_as_a_drifting_series():
    w = Watcher(C.Config())
    assert w._is_new(finding(170.0, 4.0))
    w.reported["loss-spikes"] = finding(170.0, 4.0)
    assert not w._is_new(finding(160.0, 4.1))  # same evidence, the proposal only drifted
    again = finding(150.0, 8.0)
    assert w._is_new(again)  # the evidence changed materially: it fires, with the same proposal
    assert again.remedy["set"] == {"train.grad_clip": 170.0} and again.remedy["text"] == "clip at 170"
    assert w._is_new(finding(40.0, 4.0))  # a materially different proposal
    assert material_change({"train.base_lr": 0.01}, {"train.base_lr": 0.003}, 0.25)
    assert not material_change({"train.milestones": [0.6, 0.95]}, {"train.milestones": [0.7, 0.95]}, 0.25)


# --- pinned rewind checkpoints -----------------------------------------------------------------------------------

@pytest.fixture
def rewind_rule():
    """A rule that fires once the 4th epoch is complete and rewinds to the end of the 2nd."""
    from nanxi_tune.engine.diagnosis.rulebook import remedy as make_remedy

    def fn(cfg, h, stats):
        if h.last_step < 4 * SPE:
            return None
        return Finding("test-rewind", "warning", "test", "rewind test", {}, make_remedy(
            {"train.base_lr": 0.001}, 2 * SPE, "lower the lr and resume from the end of the 2nd epoch"), h.last_step)

    RULES["test-rewind"] = Rule("test-rewind", fn, "test", None)
    yield
    del RULES["test-rewind"]


def small(**updates) -> C.Config:
    return tiny(**{"train.epochs": 8, "eval.interval": 1, "eval.online": False, "train.keep_checkpoints": 3,
                   **updates})


def test_rewind_older_than_the_ring_still_resumes_from_that_step(tmp_path, rewind_rule):
    parent = tmp_path / "p"
    assert Trainer(small(), parent).run() == "finished"
    ring = [pins.step_of(p) for p in rundir.ring_checkpoints(parent)]
    assert 2 * SPE not in ring and ring == [SPE, 6 * SPE, 7 * SPE, 8 * SPE]  # rotated away (the first eval's stays: 13.1's rewind)
    f = next(f for f in remedy.open_findings(parent) if f["rule"] == "test-rewind")
    assert f["remedy"]["checkpoint_step"] == 2 * SPE and pins.pinned(parent, "test-rewind") is not None

    child = remedy.apply(parent, f, tmp_path, trial=False)
    assert ckpt_io.peek(rundir.last_checkpoint(child), "step") == 2 * SPE
    assert json.loads((child / remedy.REMEDY_JSON).read_text())["from_step"] == 2 * SPE
    assert pins.pinned(parent, "test-rewind") is None and not list(pins.pinned_dir(parent).glob("*.pt"))
    assert "test-rewind" not in {x["rule"] for x in remedy.open_findings(parent)}  # applied: closed
    t = Trainer.resume(child, max_steps=3 * SPE)
    assert t.run() == "stopped" and t.step == 3 * SPE
    steps = [m["step"] for m in rundir.read_metrics(child) if m["split"] == "train"]
    assert steps == list(range(1, 3 * SPE + 1))  # the parent's lines up to the rewind, then the child's

    # without the pin: the newest checkpoint before it (the kept first eval's); with none, refused, never started
    # from scratch unannounced
    pins.release(parent)
    assert json.loads((remedy.apply(parent, f, tmp_path, trial=False) / remedy.REMEDY_JSON).read_text())[
        "from_step"] == SPE
    rundir.ring_checkpoint(parent, SPE).unlink()
    with pytest.raises(remedy.RemedyError, match=f"resumes from step {2 * SPE}.*from scratch"):
        remedy.apply(parent, f, tmp_path, trial=False)
    child = remedy.apply(parent, f, tmp_path, trial=False, allow_scratch=True)
    assert not remedy.has_checkpoint(child) and "from step 0, as asked" in json.loads(
        (child / remedy.REMEDY_JSON).read_text())["start"]


def test_dismiss_releases_the_pin(tmp_path, rewind_rule):
    parent = tmp_path / "p"
    assert Trainer(small(**{"train.epochs": 5}), parent).run() == "finished"
    f = next(f for f in remedy.open_findings(parent) if f["rule"] == "test-rewind")
    assert pins.pinned(parent, "test-rewind") is not None
    remedy.dismiss(parent, f)
    assert pins.pinned(parent, "test-rewind") is None
    assert "test-rewind" not in {x["rule"] for x in remedy.open_findings(parent)}


# --- the lr trial -----------------------------------------------------------------------------------------------

def test_lr_trial_descends_and_the_child_continues_from_the_best_trial(tmp_path, rewind_rule, monkeypatch):
    parent = tmp_path / "p"
    assert Trainer(small(**{"train.epochs": 5, "train.base_lr": 0.03}), parent).run() == "finished"
    f = next(f for f in remedy.open_findings(parent) if f["rule"] == "test-rewind")
    seen = []
    child = remedy.apply(parent, f, tmp_path, trial_steps=3, callback=seen.append)
    rec = json.loads((child / remedy.REMEDY_JSON).read_text())
    values = [t["value"] for t in rec["trial"]["trials"]]
    assert values == [0.01, 0.003, 0.001, 0.0003, 0.0001, 3e-05, 1e-05][:len(values)] and len(values) >= 2
    assert [t.value for t in seen] == values and all(t["steps"] == 3 for t in rec["trial"]["trials"])
    best, applied = rec["trial"]["best"], rec["trial"]["applied"]
    done = {t["value"]: t["score"] for t in rec["trial"]["trials"] if t["status"] == "done"}
    assert done[best] <= min(done.values()) * (1 + lr_trial.TIE)
    assert applied in (best, values[values.index(best) + 1] if values.index(best) + 1 < len(values) else best)
    assert C.load(child / rundir.CONFIG).train.base_lr == applied and rec["set"] == {"train.base_lr": applied}
    # the child goes on from the end of its trial: 2 epochs of the parent, then 3 trial steps, not redone
    assert ckpt_io.peek(rundir.last_checkpoint(child), "step") == 2 * SPE + 3
    assert [m["step"] for m in rundir.read_metrics(child) if m["split"] == "train"] == list(range(1, 2 * SPE + 4))
    assert not list((child / "trials").rglob("*.pt"))  # the trials' weights go; their curves stay in remedy.json
    # the trials live in an Optuna study beside them: each value once, its score the trial's
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="lr-descent", storage=JournalStorage(JournalFileBackend(
        str(child / "trials" / "optuna.journal"))))
    assert [t.params["train.base_lr"] for t in study.trials] == values
    assert {t.params["train.base_lr"]: t.value for t in study.trials if t.value is not None} == done
    assert Trainer.resume(child).run() == "finished"

    # every value blowing up (the pruner cuts each): refused, nothing left behind
    monkeypatch.setattr(lr_trial, "BLOWUP", 1e-6)
    before = set(tmp_path.iterdir())
    f2 = {**f, "step": f["step"] + 1}
    with pytest.raises(remedy.RemedyError, match="without blowing up"):
        remedy.apply(parent, f2, tmp_path, trial_steps=4)
    assert set(tmp_path.iterdir()) == before


# --- the CLI ------------------------------------------------------------------------------------------------------

def test_remedy_cli(tmp_path, rewind_rule, capsys):
    import shutil

    parent = tmp_path / "p"
    assert Trainer(small(**{"train.epochs": 5}), parent).run() == "finished"
    twin = tmp_path / "twin"
    shutil.copytree(parent, twin)
    assert main(["remedy", str(parent), "--list"]) == 0
    out = capsys.readouterr().out
    assert "test-rewind" in out and f"checkpoint {2 * SPE} pinned" in out
    assert main(["remedy", str(parent), "--dry-run", "--trial-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "train.base_lr: 0.003 → 0.001" in out and f"child starts from its step {2 * SPE}" in out
    assert "0.001, 0.0003" in out and "2 steps each" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "twin"]  # a dry run writes nothing
    assert main(["remedy", str(parent), "no-such-rule"]) == 2
    assert main(["remedy", str(parent), "val-plateau"]) == 1  # a real rule with no open finding here
    capsys.readouterr()
    # an info finding whose remedy is a workflow, not a config change: the command that does it (issue 22)
    assert main(["remedy", str(parent), "stale-normalization"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"do it with: nanxi-tune stats --preset {parent}/config.toml --save {parent}-normalized.toml" in err, err

    # the default: apply the most severe open finding, prove the lr, train the child to the planned end
    assert main(["remedy", str(parent), "--quiet", "--trial-steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "trial train.base_lr = 0.001: held-out val loss" in err
    child = next(p for p in tmp_path.iterdir() if p.name.startswith("p-test-rewind"))
    assert max(m["step"] for m in rundir.read_metrics(child)) == 5 * SPE
    assert rundir.recorded_state(child) == "finished"
    assert main(["remedy", str(parent)]) == 1  # closed: nothing open with a change is left
    assert "no open finding with a config change" in capsys.readouterr().err

    assert main(["remedy", str(twin), "test-rewind", "--no-train", "--no-trial"]) == 0
    out = capsys.readouterr().out
    kid = next(p for p in tmp_path.iterdir() if p.name.startswith("twin-test-rewind"))
    assert f"nanxi-tune resume {kid}" in out and ckpt_io.peek(rundir.last_checkpoint(kid), "step") == 2 * SPE
    assert C.load(kid / rundir.CONFIG).train.base_lr == 0.001 and not (kid / "trials").exists()


def test_lr_trials_are_ranked_on_held_out_data_and_one_upturn_does_not_end_the_descent(tmp_path, rewind_rule,
                                                                                      monkeypatch):
    """Issue 21: short trials ranked by their own train loss favour large lrs. The score is the trial's online
    weights' val loss; the descent goes on past one noisy upturn and stops after PATIENCE worse trials in a row."""
    from nanxi_tune.engine.evaluation import evaluate_run

    parent = tmp_path / "p"
    assert Trainer(small(**{"train.epochs": 5, "train.base_lr": 0.1}), parent).run() == "finished"
    f = next(f for f in remedy.open_findings(parent) if f["rule"] == "test-rewind")
    # held-out val loss by lr: an upturn at 0.01 (diverging: above 2x the best), the best at 0.003, then worse twice
    held = {0.03: 3.0, 0.01: 4.5, 0.003: 2.0, 0.001: 2.6, 0.0003: 2.9, 0.0001: 1.0}
    lr_of = {}

    def fake(path):
        value = lr_of.setdefault(path, C.load(path / rundir.CONFIG).train.base_lr)
        return {"loss_map": held[value], "loss_offset": 0.0, "loss_shape": 0.0, "mAP": 1 / held[value]}

    monkeypatch.setattr(evaluate_run, "evaluate_online", fake)
    child = remedy.apply(parent, f, tmp_path, trial_steps=3)
    rec = json.loads((child / remedy.REMEDY_JSON).read_text())
    trials = rec["trial"]["trials"]
    assert [t["value"] for t in trials] == [0.03, 0.01, 0.003, 0.001, 0.0003]  # past the upturn, not to 0.0001
    assert all(t["score"] == held[t["value"]] and t["train_score"] is not None for t in trials)
    # short trials favour large lrs: the best-scored 0.003, next to a diverging 0.01, is backed off to the next value
    # down, whose trial the child continues from (issue 21: BCCD at lr x100 chose 0.003 so; a child reached 0.55)
    assert rec["trial"]["best"] == 0.003 and rec["trial"]["applied"] == 0.001
    assert C.load(child / rundir.CONFIG).train.base_lr == 0.001 and rec["set"] == {"train.base_lr": 0.001}
    after = [m for m in rundir.read_metrics(child) if m["split"] == "train" and m["step"] > rec["from_step"]]
    trial_lines = [m for m in rundir.read_metrics(child / "trials" / "lr-0.001") if m["split"] == "train"
                   and m["step"] > rec["from_step"]]
    assert len(after) == 3 and after == trial_lines  # the 0.001 trial's steps, not 0.003's
    assert "best-scored 0.003, applied the next value down" in rundir.read_events(child)[0]["message"]


def test_the_back_off_only_at_the_edge_of_divergence():
    T = lr_trial.Trial
    diverged = [T(0.01, "done", 64.5), T(0.003, "done", 3.6), T(0.001, "done", 4.6)]  # BCCD at lr x100, seed 0
    assert lr_trial.backed_off(diverged, diverged[1]) == 0.001
    assert lr_trial.backed_off([T(0.01, "blew-up", math.inf), *diverged[1:]], diverged[1]) == 0.001
    assert lr_trial.backed_off(diverged, diverged[2]) == 0.001  # the last value tried: nothing below it
    near = [T(0.03, "done", 4.2), T(0.01, "done", 3.5), T(0.003, "done", 3.8)]  # the value above learns too
    assert lr_trial.backed_off(near, near[1]) == 0.01
    first = [T(0.01, "done", 3.8), T(0.003, "done", 4.3)]  # best right below the run's lr: no trial above it
    assert lr_trial.backed_off(first, first[0]) == 0.01
    cut = [T(0.01, "blew-up", math.inf), T(0.003, "done", 2.0), T(0.001, "failed", math.inf)]
    assert lr_trial.backed_off(cut, cut[1]) == 0.003  # the value below did not finish
    assert lr_trial.backed_off(cut, None) is None


# --- a change proven against the unchanged run (the localisation remedy) -------------------------------------------

@pytest.fixture
def giou_rule():
    """A rule that proposes the localisation remedy (loss.shape_loss = giou, proven on AP75) from the 2nd epoch."""
    from nanxi_tune.engine.diagnosis.rulebook import remedy as make_remedy

    def fn(cfg, h, stats):
        if h.last_step < 4 * SPE or cfg.loss.shape_loss == "giou":
            return None
        return Finding("test-giou", "warning", "test", "loose boxes", {}, make_remedy(
            {"loss.shape_loss": "giou"}, 2 * SPE, "continue with GIoU", proof="AP75"), h.last_step)

    RULES["test-giou"] = Rule("test-giou", fn, "test", None)
    yield
    del RULES["test-giou"]


def scored(ap75_with_giou: float, ap75_without: float):
    """evaluate_online for the arms: AP75 by the trial's shape loss (what a real evaluation would say is the
    question the trial answers; here each arm's answer is fixed so that either outcome is tested)."""
    def evaluate_online(run_dir):
        cfg = C.load(run_dir / rundir.CONFIG)
        ap75 = ap75_with_giou if cfg.loss.shape_loss == "giou" else ap75_without
        return {"mAP": ap75 / 2, "AP75": ap75, "loss_map": 1.0, "loss_offset": 1.0, "loss_shape": 1.0}
    return evaluate_online


def test_a_proven_remedy_continues_from_its_trial_and_an_unproven_one_is_refused(tmp_path, giou_rule, monkeypatch,
                                                                                  capsys):
    from nanxi_tune.engine.evaluation import evaluate_run

    parent = tmp_path / "p"
    assert Trainer(small(**{"train.epochs": 5}), parent).run() == "finished"
    f = next(f for f in remedy.open_findings(parent) if f["rule"] == "test-giou")
    plan = remedy.plan(parent, f, trial_steps=4)
    assert plan["proof"] == {"metric": "AP75", "steps": 4} and plan["from_step"] == 2 * SPE
    assert main(["remedy", str(parent), "test-giou", "--dry-run", "--trial-steps", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "trial: 4 steps with the change and 4 without, from the same checkpoint; applied when it raises val AP75" in out

    monkeypatch.setattr(evaluate_run, "evaluate_online", scored(0.30, 0.40))  # the change loses: nothing applied
    before = set(tmp_path.iterdir())
    with pytest.raises(remedy.RemedyError, match="not proven.*AP75 0.300 with the change vs 0.400 without"):
        remedy.apply(parent, f, tmp_path, trial_steps=4)
    assert set(tmp_path.iterdir()) == before and "test-giou" in {x["rule"] for x in remedy.open_findings(parent)}

    heard = []
    monkeypatch.setattr(evaluate_run, "evaluate_online", scored(0.45, 0.40))  # the change wins
    child = remedy.apply(parent, f, tmp_path, trial_steps=4, callback=heard.append)
    assert [(a.name, a.status, a.steps, a.score) for a in heard] == [("control", "done", 4, 0.40),
                                                                     ("remedy", "done", 4, 0.45)]
    rec = json.loads((child / remedy.REMEDY_JSON).read_text())
    assert rec["proof"]["won"] and rec["start_step"] == 2 * SPE + 4 and "trial's 4 steps" in rec["start"]
    assert C.load(child / rundir.CONFIG).loss.shape_loss == "giou"
    assert ckpt_io.peek(rundir.last_checkpoint(child), "step") == 2 * SPE + 4  # the remedy arm's end
    assert not list((child / "trials").glob("*/checkpoints/*.pt"))  # the trials keep their curves, not weights
    t = Trainer.resume(child, max_steps=2 * SPE + 6)
    assert t.run() == "stopped" and t.model.criterion.cfg.loss.shape_loss == "giou"
