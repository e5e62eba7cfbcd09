"""visionrpc's benchmark: the server held to the speed of its own in-process pipeline, in one run.

Run it from the repository root: `python -m bench` (full, minutes) or `python -m bench --quick` (seconds, CI).
See bench/README.md for what is measured, the targets, and how the numbers are produced.
"""
