"""The shared-password login refuses, without an error, passwords of any text."""

import asyncio

import pytest
from labhub.sharedpassword import SharedPasswordAuthenticator

pytestmark = pytest.mark.unit
USER_PASSWORD = "abcDEF123456ghij"
ADMIN_PASSWORD = "0" * 48


def authenticator() -> SharedPasswordAuthenticator:
    return SharedPasswordAuthenticator(
        user_password=USER_PASSWORD,
        admin_password=ADMIN_PASSWORD,
        admin_users={"admin"},
        allow_all=True,
    )


@pytest.mark.parametrize("password", ["\x80", "pässword", "密码", "\ud800x", "", None, 42])
@pytest.mark.parametrize("username", ["alice", "admin"])
def test_odd_passwords_are_refused_not_crashed(username: str, password: object) -> None:
    result = asyncio.run(
        authenticator().authenticate(None, {"username": username, "password": password})
    )
    assert result is None


def test_the_right_passwords_still_log_in() -> None:
    auth = authenticator()
    user = asyncio.run(auth.authenticate(None, {"username": "alice", "password": USER_PASSWORD}))
    admin = asyncio.run(auth.authenticate(None, {"username": "admin", "password": ADMIN_PASSWORD}))
    assert user["name"] == "alice" and not user["admin"]
    assert admin["name"] == "admin" and admin["admin"]


def test_workshop_mode_admins_need_the_admin_password() -> None:
    auth = authenticator()
    attempt = {"username": "admin", "password": USER_PASSWORD}
    assert asyncio.run(auth.authenticate(None, attempt)) is None
