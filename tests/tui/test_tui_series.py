"""The monitor's curve history stays bounded over a million logged steps and keeps the newest point; the system
strip's memory line of every rank fits its width."""

import tracemalloc

from nanxi_tune.tui.monitor_widgets import rank_memory
from nanxi_tune.tui.plots import Series


def test_million_points_in_bounded_memory():
    tracemalloc.start()
    s = Series(cap=4096)
    for i in range(1, 1_000_001):
        s.add(i, i * 0.5)
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    xs, ys = s
    assert len(xs) == len(ys) <= 4097 and used < 2_000_000
    assert xs[0] == 1 and xs[-1] == 1_000_000 and ys[-1] == 500_000.0
    assert xs == sorted(xs)
    gaps = {b - a for a, b in zip(xs[:-2], xs[1:-1])}
    assert max(gaps) - min(gaps) <= 1  # evenly thinned, not clumped


def test_short_series_is_kept_whole():
    s = Series()
    for i in range(10):
        s.add(i, float(i))
    assert s[0] == list(range(10)) and s[1] == [float(i) for i in range(10)] and len(s) == 10


def test_bridge_thins_steps_when_the_ui_falls_behind():
    from dataclasses import MISSING, fields
    from types import SimpleNamespace

    from nanxi_tune.engine.run import events as E
    from nanxi_tune.tui.bridge import RunBridge

    def event(cls, step):  # the bridge sorts by class: real events, zeros where a field has no default
        return cls(**{f.name: 0 for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
                   | {"step": step})

    posted = []
    bridge = RunBridge(SimpleNamespace(post_message=posted.append), max_buffer=1024)
    for i in range(1, 5001):
        bridge(event(E.StepMetrics, i))
    bridge(event(E.EvalMetrics, 5000))
    train, val, other = bridge.drain()
    assert len(posted) == 1  # one message in flight at a time
    assert 512 <= len(train) <= 1024 and train[-1].step == 5000 and train[0].step < 100
    assert [e.step for e in train] == sorted(e.step for e in train)
    assert len(val) == 1  # evaluations are never thinned


def test_rank_memory_shows_every_rank_and_folds_what_does_not_fit():
    assert rank_memory((), 0, "") == ""
    assert rank_memory([412.3], 24000, "cpu") == "run RSS 412 MiB"
    assert rank_memory([3174.4, 3072.0], 81559, "cuda") == "GPU/rank 3.1 3.0/80 GiB"
    eight = rank_memory([3000.0] * 5 + [9216.0, 3000.0, 3100.0], 81559, "cuda")
    assert eight == "GPU/rank 2.9 2.9 2.9 2.9 2.9 9.0 2.9 3.0/80 GiB"
    sixteen = rank_memory([3000.0] * 9 + [9216.0] + [3000.0] * 6, 81559, "cuda")
    assert sixteen == "GPU/rank 2.9–9.0/80 GiB ×16 (max r9)" and len(sixteen) <= 50
