"""Parsing Darknet `.cfg` files into typed sections.

A Darknet cfg is an INI-like list of `[section]` headers, each followed by `key=value` lines. The first
section describes the network (`[net]` or `[network]`); every later one is a layer, numbered from 0 in file
order (that number is what `[route] layers=` and `[shortcut] from=` refer to).

Darknet's own reader strips *all* whitespace from a line before splitting it ("anchors = 10,14,  23,27"
reads as "10,14,23,27"), treats lines starting with `#` or `;` as comments, and, when a key repeats inside a
section, uses the first occurrence. This parser does the same, so a cfg means here what it means to Darknet.

Example:
    >>> sections = parse_cfg("[net]\\nwidth=416\\nheight=416\\n[maxpool]\\nsize=2\\nstride=1\\n")
    >>> sections[1].kind, sections[1].get_int("stride")
    ('maxpool', 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

__all__ = ["CfgSection", "DarknetCfgError", "parse_cfg", "read_cfg"]

_NETWORK_KINDS = ("net", "network")


class DarknetCfgError(ValueError):
    """The cfg text is malformed or asks for something the importer cannot represent; says where."""


@dataclass(frozen=True, slots=True)
class CfgSection:
    """One `[kind]` block of a cfg file; `line` is the 1-based line of its header, for error messages."""

    kind: str
    options: Mapping[str, str]
    line: int

    def where(self) -> str:
        return f"[{self.kind}] at line {self.line}"

    def has(self, key: str) -> bool:
        return key in self.options

    def get_str(self, key: str, default: str | None = None) -> str:
        value = self.options.get(key, default)
        if value is None:
            raise DarknetCfgError(f"{self.where()}: missing required option '{key}'")
        return value

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options and default is not None:
            return default
        text = self.get_str(key)
        try:
            return int(text)
        except ValueError:
            raise DarknetCfgError(f"{self.where()}: expected an integer for '{key}', got {text!r}") from None

    def get_float(self, key: str, default: float | None = None) -> float:
        if key not in self.options and default is not None:
            return default
        text = self.get_str(key)
        try:
            return float(text)
        except ValueError:
            raise DarknetCfgError(f"{self.where()}: expected a number for '{key}', got {text!r}") from None

    def get_ints(self, key: str, default: tuple[int, ...] | None = None) -> tuple[int, ...]:
        if key not in self.options and default is not None:
            return default
        text = self.get_str(key)
        try:
            # Darknet tolerates a trailing comma ("mask = 0,1,2,"), so empty items are skipped.
            return tuple(int(item) for item in text.split(",") if item)
        except ValueError:
            raise DarknetCfgError(
                f"{self.where()}: expected comma-separated integers for '{key}', got {text!r}"
            ) from None

    def get_floats(self, key: str) -> tuple[float, ...]:
        text = self.get_str(key)
        try:
            return tuple(float(item) for item in text.split(",") if item)
        except ValueError:
            raise DarknetCfgError(
                f"{self.where()}: expected comma-separated numbers for '{key}', got {text!r}"
            ) from None


def parse_cfg(text: str) -> tuple[CfgSection, ...]:
    """Parses cfg text into sections: element 0 is the `[net]` section, the rest are the layers in order.

    Raises:
        DarknetCfgError: on an option outside any section, a line that is neither a header nor `key=value`,
            an empty section name, a file without `[net]` first, or a file with no layers.
    """
    sections: list[CfgSection] = []
    kind: str | None = None
    header_line = 0
    options: dict[str, str] = {}

    def close_section() -> None:
        if kind is not None:
            sections.append(CfgSection(kind, MappingProxyType(dict(options)), header_line))

    for number, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())  # Darknet's strip(): every whitespace character, not just the ends
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise DarknetCfgError(f"line {number}: malformed section header {raw.strip()!r}")
            close_section()
            kind, header_line, options = line[1:-1].lower(), number, {}
            continue
        if kind is None:
            raise DarknetCfgError(f"line {number}: option {raw.strip()!r} appears before any [section]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise DarknetCfgError(f"line {number}: expected 'key=value' in [{kind}], got {raw.strip()!r}")
        options.setdefault(key, value)  # first occurrence wins, as in Darknet's option_find
    close_section()

    if not sections:
        raise DarknetCfgError("the cfg has no sections; expected [net] followed by layers")
    if sections[0].kind not in _NETWORK_KINDS:
        raise DarknetCfgError(f"the first section must be [net] or [network], got {sections[0].where()}")
    if len(sections) == 1:
        raise DarknetCfgError("the cfg has a [net] section but no layers")
    extra_net = [s.where() for s in sections[1:] if s.kind in _NETWORK_KINDS]
    if extra_net:
        raise DarknetCfgError(f"only the first section may be [net]; found another at {extra_net[0]}")
    return tuple(sections)


def read_cfg(path: Path) -> tuple[CfgSection, ...]:
    """Reads and parses a cfg file (UTF-8; Darknet cfgs are ASCII)."""
    try:
        return parse_cfg(path.read_text(encoding="utf-8"))
    except DarknetCfgError as exc:
        raise DarknetCfgError(f"{path}: {exc}") from None
