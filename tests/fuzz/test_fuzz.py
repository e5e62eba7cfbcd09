"""A bounded fuzzing run of every target (targets.py) in CI: each under atheris for FUZZ_SECONDS (default
10 s; ~80 s for all six on two cores), in a process of its own, from its seeds. Prints, per target, the
executions, the coverage reached and the crashes (none is the only pass). A crash's input is saved by
libFuzzer and shown here; it becomes a case in test_regressions.py. Longer runs, their figures:
docs/fuzzing.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz.targets import TARGETS

RUNNER = Path(__file__).resolve().parent / "run.py"
SECONDS = int(os.environ.get("FUZZ_SECONDS", "10"))


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target(target: str, tmp_path: Path) -> None:
    command = [
        sys.executable, str(RUNNER), target,
        f"-max_total_time={SECONDS}",
        "-timeout=10",  # one input slower than this is a hang (say, a path resolved in quadratic time)
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 120)
    log = result.stdout + result.stderr
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    coverage = re.findall(r"cov: (\d+)", log)
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    runs, seconds = done.groups() if done else ("?", "?")
    edges = coverage[-1] if coverage else "?"
    print(
        f"\nfuzz {target}: {runs} executions in {seconds} s, coverage {edges} edges, {len(crashes)} crashes"
    )
    found = {name: (tmp_path / name).read_bytes()[:200] for name in crashes}
    uncaught = log[log.find("=== Uncaught") :][:3000] if "=== Uncaught" in log else log[-3000:]
    assert result.returncode == 0 and not crashes and done, f"{found}\n{uncaught}"
