"""The notes' cheat-sheet (超参数速查表) as strict pydantic models, read as ``from nanxi_tune.engine import config as C``.

Every field carries a description, the notes' Chinese label (``zh``) where the notes give one, the notes' remark
(``note``) and whether it may change mid-run (``live``). The TUI builds its panels from this schema; presets and
``--set`` use the dotted keys. A key's schema is in the module of its group: ``data_keys`` (preprocess, normalize,
encode, data, augment), ``model_keys`` (principles, backbone, neck, head, loss), ``train_keys`` (train,
postprocess, eval, budget), ``diagnose_keys``; the whole model and validation in ``schema``, changing a config in
``edits``, TOML and presets in ``presets``.
"""

from __future__ import annotations

from .fields import F, Strict
from .data_keys import Augment, Data, Encode, Normalize, Preprocess
from .model_keys import Backbone, Head, Loss, Neck, Principles
from .train_keys import Budget, Eval, Postprocess, Train
from .diagnose_keys import Diagnose
from .schema import (Config, ConfigError, did_you_mean, field_info, flatten, GROUPS, is_live, known_keys,
                     linear_lr, problems_from, validate)
from .edits import (diff, live_keys, live_keys_summary, parse_sets, parse_value, toml_value,
                    with_live_updates, with_updates)
from .presets import (base_of, dumps, load, load_preset, loads, preset_names, PRESETS_DIR, resolve_preset,
                      save)

__all__ = ['Augment', 'Backbone', 'base_of', 'Budget', 'Config', 'ConfigError', 'Data', 'Diagnose', 'did_you_mean',
           'diff', 'dumps', 'Encode', 'Eval', 'F', 'field_info', 'flatten', 'GROUPS', 'Head', 'is_live', 'known_keys',
           'linear_lr', 'live_keys', 'live_keys_summary', 'load', 'load_preset', 'loads', 'Loss', 'Neck', 'Normalize',
           'parse_sets', 'parse_value', 'Postprocess', 'Preprocess', 'preset_names', 'PRESETS_DIR', 'Principles',
           'problems_from', 'resolve_preset', 'save', 'Strict', 'toml_value', 'Train', 'validate', 'with_live_updates',
           'with_updates']
