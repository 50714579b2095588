"""The API body guard: JSON objects pass, other JSON gets 400 instead of a 500, and an
unchanged user name in a PATCH body is dropped instead of nulling the name."""

from types import SimpleNamespace
from typing import Any

import pytest
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.apihandlers.users import UserAPIHandler
from labhub.apiguard import guard_api_bodies
from tornado import web

pytestmark = pytest.mark.unit


def body_of(raw: bytes) -> Any:
    guard_api_bodies()
    handler = SimpleNamespace(request=SimpleNamespace(body=raw), log=SimpleNamespace())
    return APIHandler.get_json_body(handler)  # type: ignore[arg-type]


def user_patch_body(raw: bytes, path_user: str, method: str = "PATCH") -> Any:
    """The body UserAPIHandler.patch sees for PATCH /hub/api/users/<path_user>."""
    guard_api_bodies()
    handler = object.__new__(UserAPIHandler)
    handler.request = SimpleNamespace(body=raw, method=method)  # type: ignore[assignment]
    handler.path_args = [path_user]
    return handler.get_json_body()


@pytest.mark.parametrize("raw", [b"true", b"[1, 2]", b"42", b'"text"'])
def test_json_that_is_not_an_object_is_a_400(raw: bytes) -> None:
    with pytest.raises(web.HTTPError) as error:
        body_of(raw)
    assert error.value.status_code == 400


def test_objects_and_empty_bodies_pass() -> None:
    assert body_of(b'{"name": "x"}') == {"name": "x"}
    assert body_of(b"") is None
    assert body_of(b"null") is None  # handlers treat it as no body, like an empty one


def test_the_admin_panels_unchanged_name_is_dropped() -> None:
    # What the admin panel sends when an admin ticks "Admin" for alice.
    assert user_patch_body(b'{"name": "alice", "admin": true}', "alice") == {"admin": True}


def test_a_real_rename_and_other_methods_keep_the_name() -> None:
    assert user_patch_body(b'{"name": "bob"}', "alice") == {"name": "bob"}
    assert user_patch_body(b'{"name": "alice"}', "alice", method="POST") == {"name": "alice"}
