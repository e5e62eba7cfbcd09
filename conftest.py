"""Loaded by pytest before any test module (and before tests/conftest.py): brings the strict editable link
tree up to date, so a module added since the last `scripts/setup` is importable as `visionrpc.*` in this run.
scripts/relink takes ~50 ms when nothing changed and does nothing outside this checkout's own install.
"""

import subprocess
import sys
from pathlib import Path

subprocess.run([sys.executable, str(Path(__file__).parent / "scripts" / "relink")], check=True)
