"""The whole cheat-sheet (超参数速查表) as one strict pydantic model, validation with messages that name the
dotted key, and the dotted keys themselves."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from .fields import Strict
from .data_keys import Augment, Data, Encode, Normalize, Preprocess
from .diagnose_keys import Diagnose
from .model_keys import Backbone, Head, Loss, Neck, Principles
from .train_keys import Budget, Eval, Postprocess, Train


GROUPS: tuple[str, ...] = ("preprocess", "normalize", "encode", "data", "principles", "backbone", "neck",
                           "head", "loss", "train", "postprocess", "augment", "eval", "budget", "diagnose")


class Config(Strict):
    """The whole cheat-sheet. ``preset`` names the preset it was built from (for diffs)."""
    preset: str = Field("", description="Preset this config was built from.")
    preprocess: Preprocess = Preprocess()
    normalize: Normalize = Normalize()
    encode: Encode = Encode()
    data: Data = Data()
    principles: Principles = Principles()
    backbone: Backbone = Backbone()
    neck: Neck = Neck()
    head: Head = Head()
    loss: Loss = Loss()
    train: Train = Train()
    postprocess: Postprocess = Postprocess()
    augment: Augment = Augment()
    eval: Eval = Eval()
    budget: Budget = Budget()
    diagnose: Diagnose = Diagnose()

    @model_validator(mode="after")
    def _stride_fits(self) -> "Config":
        if self.preprocess.input_size % 32:
            raise ValueError("preprocess.input_size must be a multiple of 32")
        return self

    @property
    def lr(self) -> float:
        return linear_lr(self.train.base_lr, self.data.batch_size, self.train.base_batch_size)


# --- errors -----------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A config problem: one line per bad key, each naming the dotted key, the value and what is allowed."""

    def __init__(self, problems: list[tuple[str, Any, str]], source: str = ""):
        self.problems = problems
        self.source = source
        head = f"invalid config{f' in {source}' if source else ''}:"
        lines = [f"  {short_text(str(key))} = {_repr(value)}: {msg}" if value is not MISSING else
                 f"  {short_text(str(key))}: {msg}" for key, value, msg in problems]
        super().__init__("\n".join([head, *lines]))


MISSING = object()


def short_text(text: str, limit: int = 120) -> str:
    """A text cut for a message: a 10 MB string stays one line."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _repr(value: Any) -> str:
    try:
        return short_text(repr(value))
    except RecursionError:  # a list nested thousands deep
        return f"<a {type(value).__name__} nested too deeply to show>"


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        ann = model.model_fields.get(str(part))
        if ann is None or not (isinstance(ann.annotation, type) and issubclass(ann.annotation, BaseModel)):
            return []
        model = ann.annotation
    return list(model.model_fields)


def problems_from(err: ValidationError) -> list[tuple[str, Any, str]]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int)) or ("config",)
        key = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            msg = "unknown key" + did_you_mean(key) + (f"; known keys here: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "model_type":
            msg = "expected a table of keys (a [section] in TOML)"
        value = e.get("input", MISSING)
        if isinstance(value, dict):
            value = MISSING
        out.append((key, value, msg))
    return out


def validate(data: dict, source: str = "") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(problems_from(err), source) from None


# --- dotted keys ------------------------------------------------------------------------------
def flatten(cfg: Config | dict) -> dict[str, Any]:
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in flatten(v).items()})
        else:
            out[k] = v
    return out


def field_info(key: str):
    """The pydantic FieldInfo of a dotted key, or None."""
    group, _, name = key.partition(".")
    g = Config.model_fields.get(group)
    if g is None or not name:
        return g if not name else None
    return g.annotation.model_fields.get(name)


def is_live(key: str) -> bool:
    info = field_info(key)
    return bool(info and (info.json_schema_extra or {}).get("live"))


def linear_lr(base_lr: float, batch_size: int, base_batch_size: int) -> float:
    """The notes' linear scaling rule: lr = base_lr × batch_size / base_batch_size."""
    return base_lr * batch_size / base_batch_size


def known_keys() -> list[str]:
    """Every dotted key of the schema (group.name), in the notes' order."""
    return [f"{g}.{n}" for g, info in Config.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
            for n in info.annotation.model_fields]


def did_you_mean(key: str) -> str:
    """" (did you mean train.base_lr?)" for a misspelt dotted key (a bare name or a group's typo too), else ""."""
    import difflib

    keys = known_keys()
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close and "." not in key:  # a bare name: match it against the names without their group
        by_name = {k.split(".", 1)[1]: k for k in keys}
        close = [by_name[n] for n in difflib.get_close_matches(key, list(by_name), n=3, cutoff=0.75)]
    return f" (did you mean {' or '.join(close)}?)" if close else ""
