"""Changing a config: dotted-key updates (--set, live edits, resume), TOML-style values, live keys, diffs."""

from __future__ import annotations

import tomllib
from typing import Any

from pydantic import ValidationError

from .schema import MISSING, Config, ConfigError, did_you_mean, field_info, flatten, is_live, problems_from, short_text


def toml_value(value: Any) -> str:
    """A value as one line of TOML, as `--set key=value` and the live-edit dialogs read it back."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    import tomli_w

    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def live_keys() -> list[str]:
    """The keys a running run accepts (``live=True`` in the schema), in the cheat-sheet's order."""
    return [k for k in flatten(Config()) if is_live(k)]


def live_keys_summary() -> str:
    """The live keys in a line: ``group.*`` where a whole group is live."""
    groups: dict[str, list[str]] = {}
    for k in flatten(Config()):
        groups.setdefault(k.partition(".")[0], []).append(k)
    out = []
    for group, keys in groups.items():
        live = [k for k in keys if is_live(k)]
        out += [f"{group}.*"] if live and live == keys else live
    return ", ".join(out)


def with_live_updates(cfg: Config, updates: dict[str, Any], source: str = "live edit") -> Config:
    """``cfg`` with ``updates`` applied mid-run: unknown keys and bad values as ``with_updates`` names them, and
    every known key that is not live refused, naming the live ones."""
    problems = [(k, v, "not a live key: it cannot change mid-run (start a new run for it); live keys are "
                 + live_keys_summary()) for k, v in updates.items() if "." in k and field_info(k) is not None
                and not is_live(k)]
    try:
        new = with_updates(cfg, updates, source)
    except ConfigError as err:
        problems = [p for p in err.problems if p[0] not in {q[0] for q in problems}] + problems
        raise ConfigError(problems, source) from None
    if problems:
        raise ConfigError(problems, source)
    return new


def parse_value(text: str) -> Any:
    """A `--set` value: TOML syntax (numbers, true/false, [lists], "strings"), bare words as strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError([("value", short_text(text), "nested too deeply (arrays or tables hundreds of levels deep) "
                            "to read; write a flat value")], "--set") from None


def with_updates(cfg: Config, updates: dict[str, Any], source: str = "--set") -> Config:
    """A new validated config with dotted-key updates applied."""
    data = cfg.model_dump(mode="json")
    problems = []
    for key, value in updates.items():
        group, _, name = key.partition(".")
        if group not in data or not isinstance(data[group], dict) or not name or "." in name:
            known = ", ".join(k for k in data if isinstance(data[k], dict))
            problems.append((key, value, f"unknown key{did_you_mean(key)}; keys are group.name with group one of: "
                                         f"{known}"))
            continue
        if name not in data[group]:
            problems.append((key, value, f"unknown key{did_you_mean(key)}; known keys in [{group}]: "
                                         f"{', '.join(data[group])}"))
            continue
        data[group][name] = value
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        problems += problems_from(err)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError([(item, MISSING, "expected key=value, e.g. train.base_lr=0.003")], "--set")
        try:
            out[key.strip()] = parse_value(text.strip())
        except ConfigError as err:  # a value nested too deeply to read: name the key
            raise ConfigError([(key.strip(), MISSING, err.problems[0][2])], "--set") from None
    return out


def diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ: {key: (a_value, b_value)}."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in fa if k != "preset" and fa.get(k) != fb.get(k)}
