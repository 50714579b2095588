"""The API body guard: JSON objects pass, other JSON gets 400 instead of a 500."""

from types import SimpleNamespace
from typing import Any

import pytest
from jupyterhub.apihandlers.base import APIHandler
from labhub.apiguard import refuse_non_object_json_bodies
from tornado import web

pytestmark = pytest.mark.unit


def body_of(raw: bytes) -> Any:
    refuse_non_object_json_bodies()
    handler = SimpleNamespace(request=SimpleNamespace(body=raw), log=SimpleNamespace())
    return APIHandler.get_json_body(handler)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [b"true", b"[1, 2]", b"42", b'"text"'])
def test_json_that_is_not_an_object_is_a_400(raw: bytes) -> None:
    with pytest.raises(web.HTTPError) as error:
        body_of(raw)
    assert error.value.status_code == 400


def test_objects_and_empty_bodies_pass() -> None:
    assert body_of(b'{"name": "x"}') == {"name": "x"}
    assert body_of(b"") is None
    assert body_of(b"null") is None  # handlers treat it as no body, like an empty one
