"""Runs one fuzz target under atheris (libFuzzer, coverage-guided over the visionrpc modules).

    python tests/fuzz/run.py TARGET [CORPUS_DIR ...] [libFuzzer flags: -runs=N -max_total_time=S ...]

With no corpus directory the target's seeds (targets.SEEDS) are the start. libFuzzer prints its progress and
"Done N runs in S second(s)"; a crash prints the Python traceback and writes the input to
`-artifact_prefix`crash-<sha1> (replay it: `python tests/fuzz/run.py TARGET that-file`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # OpenCV logs every undecodable input: a log per run

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["visionrpc"]):
    from targets import SEEDS, TARGETS


def main() -> None:
    name, *rest = sys.argv[1:]
    target = TARGETS[name]
    if not any(not arg.startswith("-") for arg in rest):
        corpus = Path(tempfile.mkdtemp(prefix=f"visionrpc-fuzz-{name}-"))
        for number, seed in enumerate(SEEDS[name]):
            (corpus / f"seed-{number}").write_bytes(seed)
        rest.append(str(corpus))
    atheris.Setup([sys.argv[0], *rest], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
