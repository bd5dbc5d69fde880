"""The diagnostic rules: small pure functions ``(cfg, history, stats) -> Finding | None``.

Ids are public and stable (like a linter's). ``RULES`` maps each id to its function, the notes'
section (or a generic rule's source) and the evidence key whose material change lets the watcher
report it again (see engine.diagnosis.watcher.Watcher). Thresholds live in ``cfg.diagnose``.

Epoch numbers in evidence are metrics.jsonl's (0-based: epoch 1 is the notes' "2nd epoch");
messages count from 1.
"""

from __future__ import annotations

# each module registers its rules into the table (engine.diagnosis.rulebook.RULES) when imported
from . import curve_rules, config_rules, stability_rules, error_rules  # noqa: F401 - in the table's order
from .rulebook import RULES, Rule, rule

__all__ = ["RULES", "Rule", "rule"]
