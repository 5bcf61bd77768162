"""Validation shared by the settings objects: the pydantic base they build on, and one-line, user-facing
error messages.
"""
from __future__ import annotations

import math
import struct
from typing import Annotated, Any, ClassVar, Literal

from PIL import Image
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError


# What Pillow raises for crafted, damaged or truncated files (its own fuzzing reports these types); any other
# exception while decoding is a bug in this code and surfaces instead of becoming a "bad file" message.
PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError,
                 Image.DecompressionBombError)


# ----------------------------------------------------------------------------- settings models

def _finite_number(value: Any) -> Any:
    """Numbers only: no strings, no true/false, no NaN or infinity (pydantic's lax mode would accept them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _whole_number(value: Any) -> Any:
    value = _finite_number(value)
    if int(value) != value:
        raise ValueError("must be a whole number")
    return int(value)


# Field types of the settings models; bounds and the user-facing name go in Field(ge=..., le=..., title=...).
Real = Annotated[float, BeforeValidator(_finite_number)]
Whole = Annotated[int, BeforeValidator(_whole_number)]


def choice(values: tuple[str, ...]) -> Any:
    """A Literal type built from a tuple of choices, so the tuple stays the one list the UI and the checks read."""
    return Literal[values]  # type: ignore[valid-type]


class Settings(BaseModel):
    """Base of the settings models (TrainConfig, AugmentConfig, SplitSpec, PublicLimits, photo parameters).

    Construction checks every field; a failure is a ValueError with one line a user can act on, in the
    words the UI uses (each field's title), instead of pydantic's multi-line report.
    """

    model_config = ConfigDict(extra="forbid", validate_default=False, allow_inf_nan=False)
    kind: ClassVar[str] = "settings"  # "unknown <kind> setting(s): ..." in messages

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ValueError(explain(error, type(self))) from None

    @classmethod
    def from_dict(cls, values: Any) -> Any:
        """Build from a JSON object; ValueError (one line) for unknown keys or bad values."""
        if not isinstance(values, dict):
            raise ValueError(f"{cls.kind} settings must be a JSON object")
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-ready dict that from_dict reads back to an equal object."""
        return self.model_dump(mode="json")

    def recheck(self) -> None:
        """Check the fields again (attributes assigned after construction are not checked when set)."""
        type(self).from_dict(self.to_dict())


def widget(model: type[BaseModel], name: str) -> dict:
    """How a page draws one field: its UI metadata (label, step, help) with the field's own bounds as the range, so
    a widget cannot offer a narrower range than the check allows and clamp a stored value into it."""
    field = model.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "ui" not in extra:
        raise KeyError(f"{model.__name__}.{name} has no UI metadata")
    bounds = {}
    for constraint in field.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(constraint, key, None) is not None:
                bounds[key[0]] = getattr(constraint, key)
    return {**extra["ui"], "min": bounds.get("g"), "max": bounds.get("l"), "default": field.default}


def edits(shown: dict, chosen: dict) -> dict:
    """The values the user changed: those whose widget returned something other than what it was drawn with.
    Saving only these keeps every value a widget could not represent exactly (a learning rate between its stops,
    a fraction between its whole percents) as it is stored."""
    return {name: value for name, value in chosen.items() if name not in shown or value != shown[name]}


def _label(model: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel]]:
    """The field's user-facing title (following nested settings) and the model that owns it."""
    label, owner = ".".join(map(str, loc)), model
    for part in loc:
        info = owner.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            break
        label = info.title or str(part)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            owner = info.annotation
    return label, owner


def explain(error: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first problem in a pydantic ValidationError (unknown keys are listed together)."""
    problems = error.errors(include_url=False)
    extra = [p for p in problems if p["type"] == "extra_forbidden"]
    if extra:
        names = sorted(str(p["loc"][-1]) for p in extra)
        owner = _owner(model, extra[0]["loc"][:-1])
        return f"unknown {getattr(owner, 'kind', 'settings')} setting(s): {', '.join(names)}"
    first = problems[0]
    label, _ = _label(model, tuple(first["loc"]))
    kind, value, ctx = first["type"], first.get("input"), first.get("ctx") or {}
    if kind == "value_error":  # from the number checks above ("must be ..."), or a nested model's own line
        message = str(ctx.get("error"))
        return f"{label} {message}, got {value!r}" if message.startswith("must ") else message
    if kind == "literal_error":
        return f"{label} must be one of {ctx.get('expected', '').replace(' or ', ', ').replace(chr(39), '')}, got {value!r}"
    bounds = {"greater_than": ("above", "gt"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("below", "lt"), "less_than_equal": ("at most", "le")}
    if kind in bounds:
        word, key = bounds[kind]
        return f"{label} must be {word} {ctx[key]:g}, got {value!r}"
    if kind in ("too_short", "too_long"):
        return f"{label} must have {ctx.get('min_length', ctx.get('max_length'))} values, got {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{label} must be true or false, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"'{label}' must be a JSON object"
    return f"{label}: {first['msg']}"


def _owner(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    owner = model
    for part in loc:
        info = owner.model_fields.get(part) if isinstance(part, str) else None
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            break
        owner = info.annotation
    return owner
