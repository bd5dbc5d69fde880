"""The field helper every key is declared with (the notes' label, remark and liveness for the UI) and the
strict base model: extra keys forbidden, no true/false for a number."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


def F(default: Any, description: str, *, zh: str | None = None, note: str | None = None,
      live: bool = False, **constraints: Any) -> Any:
    """A field with the notes' metadata attached for the UI."""
    extra = {"zh": zh, "note": note, "live": live}
    return Field(default, description=description,
                 json_schema_extra={k: v for k, v in extra.items() if v not in (None, False)} | {"live": live},
                 **constraints)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info) -> Any:
        """pydantic's lax mode reads true/false as 1/0 in a number field and 1/0 as true/false in a switch; in a
        preset either is a typo, not a value."""
        ann = cls.model_fields[info.field_name].annotation
        if isinstance(v, bool) and ann in (int, float):
            raise ValueError("expected a number, not true/false")
        if ann is bool and isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ValueError("expected true or false, not a number")
        return v
