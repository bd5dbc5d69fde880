"""A study trial that cannot change the answer stops half-way (engine.workflows.study_prune): scored at each
``prune_epoch``-th epoch, one below half the best figure at the same step is cut, "pruned" — never the best, never
handed out again, its steps short of its budget; its last evaluation never cuts it."""

import json

import pytest

from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.workflows import sweep as S
from nanxi_tune.engine.workflows.study import Study, StudyError, StudySpec
from nanxi_tune.engine.workflows.study_prune import MIN_REFERENCE, PRUNE_RATIO, hopeless, pruner, score_at
from conftest import tiny

ARMS = [{"name": "as-is", "set": {}}, {"name": "l1", "set": {"loss.shape_loss": "l1"}}]


@pytest.fixture(autouse=True)
def one_thread_trials(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def small():
    return tiny(**{"data.synthetic_train": 32, "data.synthetic_val": 8, "train.epochs": 1, "eval.online": False})


def reference(folder, figures: dict[int, float]):
    """A run folder outside the study that was scored ``figures`` ({step: mAP}) — the carried as-is of a round."""
    folder.mkdir(parents=True)
    lines = [{"kind": "eval", "split": "val", "step": s, "mAP": m, "AP50": m} for s, m in figures.items()]
    (folder / rundir.METRICS).write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return str(folder)


def study(folder, steps: int, refs: list[str], arms=ARMS):
    spec = StudySpec("arms", "arm", [], steps, None, "p", small().model_dump(mode="json"), arms=arms,
                     prune_epoch=1, prune_refs=refs)
    Study.create(folder / "st", spec)
    return S.load(folder / "st")


def val_steps(run_dir):
    return [m["step"] for m in rundir.read_metrics(run_dir) if m.get("split") == "val"]


def test_the_rule_cuts_below_half_the_best_and_never_against_noise():
    assert hopeless(0.2, [0.3, 0.5]) and not hopeless(PRUNE_RATIO * 0.5, [0.3, 0.5])
    assert not hopeless(0.0, []) and not hopeless(0.0, [MIN_REFERENCE / 2])  # nothing to cut against


class Fake:
    """Just what the pruner reads of a study, its trials and a trainer."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def fake_study(tmp_path, others: dict[str, tuple[str, float]], refs: list[str] = (), broken: bool = False):
    """``others``: name → (Optuna state, its mAP at step 10)."""
    marked = {}
    trials = [Fake(number=0, user_attrs={}, state=Fake(name="RUNNING"))]
    for i, (name, (state, m)) in enumerate(others.items(), 1):
        trials.append(Fake(number=i, user_attrs={"run_dir": reference(tmp_path / name, {10: m})},
                           state=Fake(name=state)))

    def listing():
        if broken:
            raise OSError("journal busy")
        return trials
    study = Fake(trials=listing, spec=Fake(prune_refs=list(refs)), mark=lambda t, **a: marked.update(a))
    return study, trials[0], marked


def test_the_cut_counts_finished_trials_and_outside_references_never_its_last_evaluation(tmp_path):
    at10 = Fake(step=10, mAP=0.2)
    mid = {"trainer": Fake(step=10, total_steps=40)}
    study, me, marked = fake_study(tmp_path, {"done": ("COMPLETE", 0.3), "live": ("RUNNING", 0.9)})
    assert pruner(study, me, mid)(at10) is None  # 0.2 ≥ half of 0.3; the live 0.9 may yet fail
    assert marked == {}
    study, me, marked = fake_study(tmp_path / "b", {"done": ("COMPLETE", 0.3)},
                                   [reference(tmp_path / "ref", {10: 0.6})])
    reason = pruner(study, me, mid)(at10)
    assert reason and "0.2000" in reason and "(0.6000)" in reason and marked["cut"] == reason  # stored first
    assert pruner(study, me, {"trainer": Fake(step=40, total_steps=40)})(at10) is None  # its last evaluation
    assert pruner(study, me, {})(at10) is None  # no trainer yet
    study, me, marked = fake_study(tmp_path / "c", {"done": ("COMPLETE", 0.9)}, broken=True)
    assert pruner(study, me, mid)(at10) is None and marked == {}  # a storage hiccup cuts nothing


def test_a_trial_cut_and_killed_before_it_was_told_is_not_trained_again(tmp_path):
    from nanxi_tune.engine.workflows.study_worker import run_claimed

    sw = study(tmp_path, 8, [])
    st = Study.open(sw.dir)
    trial = st.claim()
    st.mark(trial, cut="pruned at step 4: …")
    assert run_claimed(st, st.trial(trial.number), sw.dir) == "pruned"
    t = st.trial(trial.number)
    assert t.state.name == "PRUNED" and t.user_attrs["status"] == "pruned"
    assert not (sw.dir / "trial-as-is" / rundir.METRICS).exists()  # nothing trained


def test_a_trial_far_behind_at_its_half_way_score_stops_there_pruned_and_never_best(tmp_path):
    ref = reference(tmp_path / "carried", {s: 0.9 for s in range(1, 200)})
    sw = study(tmp_path, 40, [ref])
    events = []
    sw.callback = events.append
    assert sw.run(devices=["cpu"]) == "finished"  # pruned trials are results: the study ends
    rows = sw.table()
    assert [r["status"] for r in rows] == ["pruned", "pruned"], rows
    for r in rows:
        d = sw.dir / f"trial-{r['label']}"
        first = val_steps(d)[0]
        assert val_steps(d) == [first] and r["steps"] == first < 40  # cut at its first (half-way) score
        assert score_at(d, first) == r["mAP"] and not r["best"]
    trials = Study.open(sw.dir).trials()
    assert all(t.state.name == "PRUNED" for t in trials)
    assert all("cannot become the best" in t.user_attrs["cut"] for t in trials)
    assert sw.best() is None and sw.done


def test_a_trial_is_not_cut_at_its_last_evaluation_nor_against_a_figure_that_is_noise(tmp_path):
    per_epoch = 32 // small().data.batch_size
    one = ARMS[:1]  # one trial a study: nothing but the reference to be cut against
    last = study(tmp_path / "a", per_epoch, [reference(tmp_path / "r1", {per_epoch: 0.9})], one)  # its end
    noise = study(tmp_path / "b", 2 * per_epoch, [reference(tmp_path / "r2", {per_epoch: MIN_REFERENCE / 2})], one)
    for sw, scored in ((last, [per_epoch]), (noise, [per_epoch, 2 * per_epoch])):
        assert sw.run(devices=["cpu"]) == "finished"
        for r in sw.table():
            assert r["status"] == "finished" and r["steps"] == scored[-1], r
            assert val_steps(sw.dir / f"trial-{r['label']}") == scored
        assert sw.best() is not None


def test_a_study_refuses_a_negative_prune_epoch(tmp_path):
    spec = StudySpec("arms", "arm", [], 4, None, "p", small().model_dump(mode="json"), arms=ARMS, prune_epoch=-1)
    with pytest.raises(StudyError, match="prune epoch"):
        Study.create(tmp_path / "st", spec)
