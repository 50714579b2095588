"""The default login (labhub.native) on a real hub database: the first admin exists
before anyone can sign up, the class code approves only a new account, odd passwords
are refused without a 500, and guessing locks the account."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from jupyterhub import orm
from labhub.native import LabNativeAuthenticator, fits_bcrypt

pytestmark = pytest.mark.unit
ADMIN_PASSWORD = "first-admin-" + "x" * 12
CODE = "class-code-2026"


@pytest.fixture
def db() -> Any:
    return orm.new_session_factory("sqlite://")()


def authenticator(db: Any, **traits: Any) -> LabNativeAuthenticator:
    defaults = {
        "admin_users": {"teacher"},
        "admin_initial_password": ADMIN_PASSWORD,
        "signup_code": CODE,
        "allow_all": True,
    }
    return LabNativeAuthenticator(_deprecated_db_session=db, **{**defaults, **traits})


def login(auth: LabNativeAuthenticator, username: str, password: Any) -> Any:
    return asyncio.run(auth.authenticate(None, {"username": username, "password": password}))


def test_the_first_admin_exists_approved_before_anyone_signs_up(db: Any) -> None:
    auth = authenticator(db)
    assert login(auth, "teacher", ADMIN_PASSWORD) == "teacher"
    # Signing up under the admin's name (any case) is refused: the name is taken.
    assert auth.create_user("teacher", "another-long-password") is None
    assert auth.create_user("Teacher", "another-long-password") is None
    assert login(auth, "teacher", "another-long-password") is None


def test_a_restart_keeps_the_admins_changed_password(db: Any) -> None:
    assert authenticator(db).change_password("teacher", "changed-by-the-admin-1")
    again = authenticator(db)
    assert login(again, "teacher", "changed-by-the-admin-1") == "teacher"
    assert login(again, "teacher", ADMIN_PASSWORD) is None


def test_a_new_account_waits_for_approval(db: Any) -> None:
    auth = authenticator(db)
    user = auth.create_user("ann", "ann-own-password-1")
    assert user is not None and not user.is_authorized
    assert login(auth, "ann", "ann-own-password-1") is None


@pytest.mark.parametrize("code", [CODE, CODE + " ", "class-code-2025", "", CODE.upper()], ids=repr)
def test_only_the_exact_code_matches(code: str) -> None:
    auth = LabNativeAuthenticator(_deprecated_db_session=None, add_new_table=False)
    auth.signup_code = CODE
    assert auth.signup_code_matches(code) is (code == CODE)


def test_no_code_configured_matches_nothing(db: Any) -> None:
    assert authenticator(db, signup_code="").signup_code_matches("") is False


@pytest.mark.parametrize(
    "password", ["short", "password123", "x" * 73, "é" * 37, "\ud800" * 12], ids=repr
)
def test_weak_or_unhashable_passwords_make_no_account(db: Any, password: str) -> None:
    assert authenticator(db).create_user("ann", password) is None


@pytest.mark.parametrize(
    "password", ["x" * 73, "é" * 40, "\ud800x", None, 42, ""], ids=lambda p: repr(p)[:12]
)
def test_odd_passwords_are_refused_not_crashed(db: Any, password: Any) -> None:
    assert login(authenticator(db), "teacher", password) is None


def test_fits_bcrypt_counts_bytes() -> None:
    assert fits_bcrypt("x" * 72) and not fits_bcrypt("x" * 73)
    assert fits_bcrypt("é" * 36) and not fits_bcrypt("é" * 37)


def test_repeated_wrong_passwords_lock_the_account_even_for_the_right_one(db: Any) -> None:
    auth = authenticator(db)
    for _ in range(auth.allowed_failed_logins):
        assert login(auth, "teacher", "guess-" + "y" * 10) is None
    assert login(auth, "teacher", ADMIN_PASSWORD) is None
    # The lock lasts seconds_before_next_try after the last failure: ten minutes later...
    auth.login_attempts["teacher"]["time"] -= timedelta(seconds=auth.seconds_before_next_try + 1)
    assert login(auth, "teacher", ADMIN_PASSWORD) == "teacher"


def test_labhubs_handlers_replace_the_broken_ones_and_keep_the_rest(db: Any) -> None:
    from labhub import native
    from nativeauthenticator import handlers

    routes = dict(authenticator(db).get_handlers(None))
    assert routes["/login"] is native.LoginHandler
    assert routes["/signup"] is native.SignUpHandler
    assert routes["/change-password"] is native.ChangePasswordHandler
    assert routes[r"/authorize/([^/]*)"] is handlers.ToggleAuthorizationHandler
    assert len(routes) == 8
