"""Configs in and out of TOML, and the presets shipped with the tool."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..files import RecordError, write_atomic
from .schema import MISSING, Config, ConfigError, short_text, validate

PRESETS_DIR = Path(__file__).resolve().parent.parent.parent / "presets"
try:  # installed wheel: presets live beside engine inside nanxi_tune
    from importlib.resources import files

    _pkg = Path(str(files("nanxi_tune.presets")))
    if _pkg.is_dir():
        PRESETS_DIR = _pkg
except Exception:  # noqa: BLE001 - source checkout without install
    pass


# --- TOML / presets ---------------------------------------------------------------------------

def loads(text: str, source: str = "") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([("toml", MISSING, f"not valid TOML: {err}")], source) from None
    except RecursionError:
        raise ConfigError([("toml", MISSING, "not a usable preset: arrays or tables nested too deeply (hundreds "
                            "of levels) to read")], source) from None
    try:
        return validate(data, source)
    except RecursionError:
        raise ConfigError([("toml", MISSING, "not a usable preset: values nested too deeply to check")],
                          source) from None


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("file", str(path), "no such file; give a preset name or an existing .toml path")],
                          str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([("file", str(path), f"cannot read it: {err}")], str(path)) from None
    return loads(text, str(path))


def dumps(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.model_dump(mode="json"))


def save(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, dumps(cfg))
    except OSError as err:  # a full disk: the old file kept, no temp file left, the file named
        raise RecordError(err.errno, path, err) from None
    return path


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def resolve_preset(name_or_path: str) -> Path:
    p = Path(name_or_path)
    try:
        if p.suffix == ".toml" or p.exists():
            return p
    except OSError:  # a name too long for a path ("File name too long"): not a file, so not a preset either
        name_or_path = short_text(name_or_path, 60)
    bundled = PRESETS_DIR / f"{name_or_path}.toml"
    if bundled.exists():
        return bundled
    raise ConfigError([("preset", name_or_path, f"no such preset; bundled presets: {', '.join(preset_names())}"
                        " (or give a path to a .toml file)")])


def load_preset(name_or_path: str) -> Config:
    """Load a preset by bundled name or path; the result remembers the preset it came from."""
    path = resolve_preset(name_or_path)
    cfg = load(path)
    if not cfg.preset:
        cfg = cfg.model_copy(update={"preset": path.stem if path.parent == PRESETS_DIR else str(path)})
    return cfg


def base_of(cfg: Config) -> Config | None:
    """The preset a config was built from, if it can still be loaded."""
    if not cfg.preset:
        return None
    try:
        return load_preset(cfg.preset)
    except ConfigError:
        return None
