"""The grammar of model ids, "name" or "name/version", in one place for the repository and the importers.

Ids come from the network, so they are checked against a strict grammar before they are ever joined to a
path: no "..", no separators, no absolute paths. `repository.ModelId` is the parsed value; this module holds
only the grammar, so that the importers (which the repository reaches through the built-ins) can apply it
without importing the repository.
"""

from __future__ import annotations

import re

from ..errors import InvalidArgumentError

__all__ = ["NAME", "VERSION", "split_model_id"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION = re.compile(r"[0-9]{1,9}")


def split_model_id(text: str, *, field: str = "model_id") -> tuple[str, str | None]:
    """ "name" -> (name, None); "name/version" -> (name, version); anything else is INVALID_ARGUMENT.

    Raises:
        InvalidArgumentError: reason INVALID_MODEL_ID, with a field violation naming `field`.
    """
    name, sep, version = text.partition("/")
    expected = "expected 'name' or 'name/version' (name: letters, digits, '.', '_', '-'; version: digits)"
    if not NAME.fullmatch(name) or name.endswith(".") or ".." in name:
        raise InvalidArgumentError.for_field(field, f"{expected}, got {text!r}", reason="INVALID_MODEL_ID")
    if sep and not VERSION.fullmatch(version):
        raise InvalidArgumentError.for_field(field, f"{expected}, got {text!r}", reason="INVALID_MODEL_ID")
    return name, (version if sep else None)
