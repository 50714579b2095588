"""What the hub's unit tests (hub/tests) and the platform tests (tests/) share.

A top-level package rather than modules inside tests/: both suites import it by one
name (`testsupport.*`, the repository root is on pytest's `pythonpath`), so hub/tests
no longer reaches into the platform tests' folder, and under `--import-mode=importlib`
there is exactly one copy of each helper whichever suite imports it first.
"""
