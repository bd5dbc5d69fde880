"""Bad presets, generated (hypothesis): wrong types, out-of-range numbers, unknown choices, unknown keys, unknown
groups, broken TOML. Each must give a ConfigError that names the offending dotted key (never another exception,
never a traceback), through config.loads / load_preset in bulk and through the CLI's error path for a sample.
Presets are data: a string that looks like code stays a string. 1300 examples in all."""

from __future__ import annotations

import contextlib
import io
import math
import string
import tempfile
import typing
from pathlib import Path

import tomli_w
from annotated_types import Ge, Gt, Le, Lt, MultipleOf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nanxi_tune.engine import config as C
from nanxi_tune.cli.main import main

DEMO = (C.PRESETS_DIR / "demo.toml").read_text()
FIELDS = [(g, n, info) for g in C.GROUPS for n, info in C.Config.model_fields[g].annotation.model_fields.items()]
FIELD_KEYS = [f"{g}.{n}" for g, n, _ in FIELDS]
RAN: dict[str, int] = {}  # examples that completed, per test


def ran(name: str) -> None:
    RAN[name] = RAN.get(name, 0) + 1

words = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)
# text that no field parses as a number, a bool or a choice: starts with "x", has a space
junk_text = st.builds(lambda s: f"x {s}", st.text(string.printable, max_size=20))
scalars = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=False), junk_text, st.booleans())
tables = st.dictionaries(words, scalars, min_size=1, max_size=3)


def bounds(info) -> dict[str, float]:
    out = {}
    for m in info.metadata:
        for cls, attr in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt"), (MultipleOf, "multiple_of")):
            if isinstance(m, cls):
                out[attr] = getattr(m, attr)
    return out


@st.composite
def bad_value(draw, info):
    """A value the field must refuse, and what kind of mistake it is."""
    ann = info.annotation
    origin = typing.get_origin(ann)
    kinds = ["table"]  # a [section] where a value belongs is wrong for every field
    if ann in (int, float):
        kinds += ["text", "list", "bool"]
        b = bounds(info)
        if {"ge", "gt", "le", "lt"} & b.keys():
            kinds += ["range", "range"]
        if ann is int:
            kinds.append("fraction")
    elif ann is str:
        kinds += ["number", "list"]
    elif ann is bool:
        kinds += ["text", "list", "number"]
    elif origin is typing.Literal:
        kinds += ["choice", "list"]
    elif origin is tuple:
        kinds += ["text", "list_of_text"]
    kind = draw(st.sampled_from(kinds))
    if kind == "table":
        return kind, draw(tables)
    if kind == "text":
        return kind, draw(junk_text)
    if kind == "list":
        return kind, draw(st.lists(scalars, max_size=3))
    if kind == "list_of_text":
        return kind, draw(st.lists(junk_text, min_size=1, max_size=3))
    if kind == "bool":
        return kind, draw(st.booleans())
    if kind == "number":  # 0 and 1 included on purpose: pydantic's lax mode would read them as false / true
        return kind, draw(st.one_of(st.sampled_from([0, 1, 0.0, 1.0]), st.integers(-1000, 1000),
                                    st.floats(-1e6, 1e6, allow_nan=False)))
    if kind == "fraction":
        return kind, draw(st.integers(-1000, 1000)) + 0.5
    if kind == "choice":
        choices = typing.get_args(ann)
        v = draw(st.one_of(words, st.integers(-100, 100)))
        assume(v not in choices and str(v) not in map(str, choices))
        return kind, v
    # range: just outside a bound, or far outside, or a non-finite number
    b = bounds(info)
    options = []
    for lo in ("ge", "gt"):
        if lo in b:
            edge = b[lo]
            options += [edge - 1 if ann is int else (edge if lo == "gt" else edge - 1e-6), edge - 10 ** 6, -math.inf]
    for hi in ("le", "lt"):
        if hi in b:
            edge = b[hi]
            options += [edge + 1 if ann is int else (edge if hi == "lt" else edge + 1e-3), edge + 10 ** 6]
            if ann is float:
                options += [math.inf, math.nan]
    v = draw(st.sampled_from(options))
    if ann is int and isinstance(v, float) and math.isfinite(v):
        v = int(v)
    return kind, v


def assert_names_key(err: C.ConfigError, key: str) -> None:
    keys = [p[0] for p in err.problems]
    assert key in keys, (key, str(err))
    assert key in str(err)


@settings(max_examples=700, deadline=None)
@given(data=st.data())
def test_a_bad_value_anywhere_names_its_dotted_key(data):
    group, name, info = data.draw(st.sampled_from(FIELDS))
    kind, value = data.draw(bad_value(info))
    key = f"{group}.{name}"
    base = __import__("tomllib").loads(DEMO)
    base.setdefault(group, {})[name] = value
    text = tomli_w.dumps(base)
    try:
        C.loads(text, "fuzz.toml")
    except C.ConfigError as err:
        assert_names_key(err, key)
        assert "fuzz.toml" in str(err)
    else:
        raise AssertionError(f"{key} = {value!r} ({kind}) was accepted")
    ran("values")


@settings(max_examples=200, deadline=None)
@given(group=st.sampled_from(C.GROUPS), name=words, value=scalars, top=words)
def test_unknown_keys_and_groups_are_named(group, name, value, top):
    cls = C.Config.model_fields[group].annotation
    assume(name not in cls.model_fields)
    with_key = {group: {name: value}}
    try:
        C.validate(with_key, "fuzz")
        raise AssertionError("unknown key accepted")
    except C.ConfigError as err:
        assert_names_key(err, f"{group}.{name}")
        assert "unknown key" in str(err)
    assume(top not in C.Config.model_fields)
    text = tomli_w.dumps({top: {name: value}})
    try:
        C.loads(text)
        raise AssertionError("unknown group accepted")
    except C.ConfigError as err:
        assert any(p[0] in (top, f"{top}.{name}") for p in err.problems), str(err)
        assert "unknown key" in str(err)
    ran("keys")


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(DEMO)), cut=st.integers(0, 40), insert=st.text(string.printable + "[]=\"'#", max_size=8))
def test_edited_and_broken_toml_never_raises_anything_else(pos, cut, insert):
    """Random edits of the demo preset: each loads, or is refused with a ConfigError naming a key (or the TOML line)."""
    text = DEMO[:pos] + insert + DEMO[pos + cut:]
    try:
        cfg = C.loads(text, "edited.toml")
    except C.ConfigError as err:
        assert err.problems
        for key, _value, msg in err.problems:
            if key == "toml":
                assert "not valid TOML" in msg and ("line" in msg or "end of document" in msg)  # where it broke
            else:
                assert key == "config" or key.split(".")[0] in C.Config.model_fields or "unknown key" in msg, str(err)
                assert key in str(err)
    else:
        assert isinstance(cfg, C.Config)
    ran("toml")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cli_refuses_bad_presets_with_exit_2_and_no_traceback(data):
    """The same mistakes through `nanxi-tune train --preset FILE`: exit 2, the key in the message, no traceback."""
    group, name, info = data.draw(st.sampled_from(FIELDS))
    kind, value = data.draw(bad_value(info))
    broken = data.draw(st.booleans()) and data.draw(st.integers(0, 9)) == 0
    base = __import__("tomllib").loads(DEMO)
    base.setdefault(group, {})[name] = value
    text = tomli_w.dumps(base) + ("[train\n" if broken else "")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bad.toml"
        path.write_text(text)
        try:  # a preset the config accepted would start a real training run below: fail fast instead
            C.load_preset(str(path))
            raise AssertionError(f"{group}.{name} = {value!r} ({kind}) was accepted")
        except C.ConfigError:
            pass
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(["train", "--preset", str(path), "--run-dir", str(Path(d) / "run")])
        said = err.getvalue() + out.getvalue()
        assert rc == 2, said
        assert "Traceback" not in said
        assert ("not valid TOML" in said) if broken else (f"{group}.{name}" in said), said
        assert str(path) in said
        assert not (Path(d) / "run").exists()  # nothing started
    ran("cli")


@settings(max_examples=40, deadline=None)
@given(payload=st.sampled_from(["__import__('os').system('touch {p}')", "eval(\"open('{p}','w')\")",
                                "!!python/object/apply:os.system ['touch {p}']", "$(touch {p})", "`touch {p}`",
                                "{{{{ ''.__class__.__mro__ }}}} {p}"]),
       key=st.sampled_from(["data.train", "data.val", "train.device", "preset"]))
def test_a_preset_is_data_and_runs_no_code(payload, key):
    """Code-looking strings in a preset stay strings (or are refused); nothing is executed."""
    with tempfile.TemporaryDirectory() as d:
        marker = Path(d) / "pwned"
        value = payload.format(p=marker)
        group, _, name = key.partition(".")
        base = __import__("tomllib").loads(DEMO)
        if name:
            base.setdefault(group, {})[name] = value
        else:
            base[group] = value
        path = Path(d) / "evil.toml"
        path.write_text(tomli_w.dumps(base))
        try:
            cfg = C.load_preset(str(path))
        except C.ConfigError as err:
            assert key in str(err)  # train.device only takes auto/cpu/cuda[:N]/mps
        else:
            assert C.flatten(cfg)[key] == value  # kept verbatim, never evaluated
            C.save(cfg, Path(d) / "again.toml")
            assert C.flatten(C.load(Path(d) / "again.toml"))[key] == value
            if name:  # --set takes group.name keys only
                assert C.flatten(C.with_updates(cfg, C.parse_sets([f"{key}={value}"])))[key] == value
        assert not marker.exists()
    ran("code")


def test_example_count_is_at_least_1000():
    """Counts the examples that ran to the end of their test body in this session (run the whole file)."""
    if set(RAN) != {"values", "keys", "toml", "cli", "code"}:
        import pytest

        pytest.skip("run the whole file to count examples")
    assert sum(RAN.values()) >= 1000, RAN
