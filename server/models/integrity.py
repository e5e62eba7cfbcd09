"""Checksums of an installed model version, written at install time and verified before it serves.

A model version's files are written once (`write_version_dir`) and never changed afterwards, so anything that
changes them later - a bad disk, a bad copy, a hand edit, an attacker with write access to the cache - would
otherwise serve wrong answers silently: a few flipped weight bytes still load, and swapped class names still
parse. At install the SHA-256 of every file of the version (the ONNX file and manifest.json) is recorded in
`integrity.json` beside them; the model manager checks them at every load and `visionrpc models verify` on
demand. A mismatch names the file and the model is FAILED, never served.

Cost: hashing runs at disk/memory speed (~0.7 GB/s on one core here), so the 35 MB yolov3-tiny costs ~50 ms
per load, next to the ~1 s its engine takes to load and warm up.

Versions installed before this module existed have no record: they load with a warning, and `models verify`
reports "no checksums". A record never covers files it does not list (new files beside the model are not
the model's).

Example:
    >>> write_integrity_record(Path("models/yolo/1"))
    >>> verify_version(Path("models/yolo/1")).ok
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import FailedPreconditionError

__all__ = [
    "INTEGRITY_FILE",
    "IntegrityReport",
    "check_integrity",
    "verify_version",
    "write_integrity_record",
]

logger = logging.getLogger(__name__)

INTEGRITY_FILE = "integrity.json"
_FORMAT = 1
_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    """What verifying one version found: `recorded` is False for a version installed without checksums;
    `changed` and `missing` name the files (relative to the version folder) that no longer match."""

    directory: Path
    recorded: bool
    checked: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.recorded and not self.changed and not self.missing

    @property
    def problems(self) -> tuple[str, ...]:
        """The files at fault, changed first, then missing ones (marked so)."""
        return self.changed + tuple(f"{name} (missing)" for name in self.missing)


def write_integrity_record(directory: Path) -> None:
    """Records the SHA-256 of every regular file in `directory` (not recursing) in its `integrity.json`.

    Called on the staging folder of an install, before it is renamed into place, so the record is part of
    the same atomic rename as the files it covers.
    """
    files = {
        path.name: _sha256(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != INTEGRITY_FILE
    }
    record = {"format": _FORMAT, "algorithm": "sha256", "files": files}
    (directory / INTEGRITY_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def verify_version(directory: Path) -> IntegrityReport:
    """Hashes the files `directory`'s record lists and compares them with it.

    An unreadable or malformed record is reported as changing `integrity.json` itself (it was written by
    the installer, so it changed too).
    """
    record_path = directory / INTEGRITY_FILE
    try:
        text = record_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return IntegrityReport(directory, recorded=False)
    except OSError:
        return IntegrityReport(directory, recorded=True, changed=(INTEGRITY_FILE,))
    expected = _parse_record(text)
    if expected is None:
        return IntegrityReport(directory, recorded=True, changed=(INTEGRITY_FILE,))
    changed: list[str] = []
    missing: list[str] = []
    for name, digest in sorted(expected.items()):
        path = directory / name
        try:
            actual = _sha256(path)
        except FileNotFoundError:
            missing.append(name)
            continue
        if actual != digest:
            changed.append(name)
    return IntegrityReport(directory, True, tuple(sorted(expected)), tuple(changed), tuple(missing))


def check_integrity(directory: Path, model_key: str) -> None:
    """Verifies a version before it loads; a version without a record loads with a warning.

    Raises:
        FailedPreconditionError: reason MODEL_FILES_CHANGED, "model files changed since install: <files>".
    """
    report = verify_version(directory)
    if not report.recorded:
        logger.warning(
            "model %s has no checksums (installed before they were recorded); loading it unverified. "
            "Re-add it to record them.",
            model_key,
        )
        return
    if not report.ok:
        raise FailedPreconditionError(
            f"model files changed since install: {', '.join(report.problems)}",
            reason="MODEL_FILES_CHANGED",
            metadata={"files": ",".join(report.changed + report.missing)},
        )


def _parse_record(text: str) -> dict[str, str] | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("algorithm") != "sha256":
        return None
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return None
    parsed: dict[str, str] = {}
    for name, digest in files.items():
        # Names are plain file names of the version folder: nothing the record says can point elsewhere.
        if not isinstance(digest, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            return None
        parsed[name] = digest
    return parsed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
