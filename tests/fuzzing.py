"""tests/test_gpus.py imports the fuzz settings from here, until it imports testsupport.fuzzing."""

from testsupport.fuzzing import FUZZ, json_body, segment

__all__ = ["FUZZ", "json_body", "segment"]
