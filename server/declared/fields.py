"""Reading one YAML mapping of the pipelines file strictly: typed fields, unknown keys refused, and every
error naming where it is (`pipelines[0] (gate).analytics.lines[1].start`), so a typo stops the server with a
message that points at it instead of being silently ignored."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["FieldError", "FieldReader", "as_list", "as_mapping"]

_T = TypeVar("_T")


class FieldError(ValueError):
    """A bad value at `where`; the file loader prefixes the file's name."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.detail = message


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def as_mapping(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise FieldError(where, f"expected a mapping of names to values, got {_kind(value)}")
    return value


def as_list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise FieldError(where, f"expected a list, got {_kind(value)}")
    return value


class FieldReader:
    """Takes the fields of one mapping; `finish()` refuses the keys nobody took.

    Example:
        fields = FieldReader(mapping, "pipelines[0]")
        name = fields.text("name")
        fps = fields.number("max_fps", None, minimum=0.0)
        fields.finish()
    """

    def __init__(self, mapping: Mapping[str, object], where: str) -> None:
        self.where = where
        self._mapping = mapping
        self._taken: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self._mapping

    def raw(self, key: str) -> object:
        self._taken.add(key)
        return self._mapping.get(key)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise FieldError(self.path(key), "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise FieldError(self.path(key), f"expected non-empty text, got {_kind(value)}")
        return value.strip()

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise FieldError(self.path(key), f"expected true or false, got {_kind(value)}")
        return value

    def number(
        self, key: str, default: float | None, *, minimum: float | None = None, maximum: float | None = None
    ) -> float | None:
        value = self.raw(key)
        if value is None:
            return default
        return number(value, self.path(key), minimum=minimum, maximum=maximum)

    def integer(self, key: str, default: int | None, *, minimum: int | None = None) -> int | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(self.path(key), f"expected a whole number, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise FieldError(self.path(key), f"expected at least {minimum}, got {value}")
        return value

    def choice(self, key: str, choices: Mapping[str, _T], default: _T) -> _T:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str) or value.lower() not in choices:
            raise FieldError(self.path(key), f"expected one of {', '.join(choices)}, got {value!r}")
        return choices[value.lower()]

    def finish(self) -> None:
        unknown = sorted(set(self._mapping) - self._taken)
        if unknown:
            raise FieldError(self.where, f"unknown field(s): {', '.join(unknown)}")


def number(value: object, where: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise FieldError(where, f"expected a number, got {_kind(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (
            f"[{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}]"
        )
        raise FieldError(where, f"expected a number in {bounds}, got {value}")
    return float(value)
