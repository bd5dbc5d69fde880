"""The monitor's curve history stays bounded over a million logged steps and keeps the newest point."""

import tracemalloc

from nanxi_tune.tui.monitor import Series


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

    from nanxi_tune.engine import events as E
    from nanxi_tune.tui.monitor import RunBridge

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
