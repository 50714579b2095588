"""Hypothesis settings and strategies shared by the fuzz tests through nginx."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # New random examples on every developer run; a fixed, repeatable set in CI, so that
    # a newly found bug shows up on a developer's machine, not as a flaky CI run.
    derandomize=bool(os.environ.get("CI")),
)
# Names of users/groups the fuzzer may touch: never a real user's.
segment = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/?#"),
    max_size=40,
).map(lambda s: "fz" + s)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=20,
)


def json_body(fields: list[str]) -> st.SearchStrategy[bytes]:
    """Raw bytes, any JSON, or a JSON object whose keys are drawn from ``fields``."""
    return st.one_of(
        st.binary(max_size=4096),
        json_value.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(fields), json_value).map(lambda v: json.dumps(v).encode()),
    )
