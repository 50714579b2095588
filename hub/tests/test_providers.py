"""A refused or failed code-for-token exchange becomes a page that explains it.

The provider's answer is played by a stand-in HTTP client here; tests/test_oidc.py
replays a used code against a real OpenID Connect provider.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from labhub.providers import CODE_REFUSED, GenericOAuthenticator
from tornado import web
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

pytestmark = pytest.mark.unit


class ProviderAnswering:
    """An HTTP client whose every request fails with ``code`` (599: no answer at all)."""

    def __init__(self, code: int) -> None:
        self.code = code

    async def fetch(self, request: HTTPRequest, **kwargs: Any) -> HTTPResponse:
        response = HTTPResponse(request, self.code) if self.code != 599 else None
        raise HTTPClientError(self.code, response=response)


def exchange(code: int) -> web.HTTPError:
    authenticator = GenericOAuthenticator(
        token_url="https://idp.example.edu/token",
        client_id="hub",
        client_secret="secret",
        http_client=ProviderAnswering(code),
    )
    with pytest.raises(web.HTTPError) as raised:
        asyncio.run(authenticator.get_token_info(None, {"code": "used"}))
    return raised.value


@pytest.mark.parametrize("code", [400, 401])
def test_a_refused_code_is_a_403_that_says_start_again(code: int) -> None:
    error = exchange(code)
    assert (error.status_code, error.log_message) == (403, CODE_REFUSED)


@pytest.mark.parametrize(("code", "reason"), [(599, "no answer"), (503, "it answered 503")])
def test_a_failing_provider_is_a_502_that_says_so(code: int, reason: str) -> None:
    error = exchange(code)
    assert error.status_code == 502
    assert f"({reason})" in (error.log_message or "")


def signed_in(username: str, groups: list[str], **traits: Any) -> Any:
    """Run JupyterHub's whole login decision for a user the provider vouched for.

    Only the provider's answer is played (its userinfo); OAuthenticator builds the auth
    model, then JupyterHub's get_authenticated_user applies the allow rules and admin.
    """
    authenticator = GenericOAuthenticator(
        username_claim="preferred_username",
        manage_groups=True,
        auth_state_groups_key="oauth_user.groups",
        allowed_groups={"students"},
        admin_groups={"staff"},
        **traits,
    )

    async def userinfo(token_info: dict[str, Any]) -> dict[str, Any]:
        return {"preferred_username": username, "groups": groups}

    async def authenticate(handler: Any, data: Any) -> Any:
        return await authenticator._token_to_auth_model({"access_token": "t"})

    authenticator.token_to_user = userinfo
    authenticator.authenticate = authenticate
    return asyncio.run(authenticator.get_authenticated_user(None, {}))


@pytest.mark.parametrize(
    ("username", "groups", "admitted_as"),
    [
        ("prof", ["visitors"], None),
        ("prof", [], None),
        ("prof", ["students"], "admin"),
        ("ann", ["students"], "user"),
        ("ann", ["staff"], "admin"),
        ("eve", ["visitors"], None),
    ],
    ids=[
        "named-admin-outside",
        "named-admin-no-groups",
        "named-admin-allowed",
        "student",
        "staff-group",
        "visitor",
    ],
)
def test_a_named_admin_must_pass_the_allow_rules(
    username: str, groups: list[str], admitted_as: str | None
) -> None:
    model = signed_in(username, groups, admins_by_name={"prof"})
    if admitted_as is None:
        assert model is None
    else:
        assert model["name"] == username
        assert model["admin"] is (admitted_as == "admin")


def test_plain_admin_users_skip_the_allow_rules_which_is_why_we_do_not_use_them() -> None:
    # OAuthenticator 17.4's own behaviour, the bug of issue 14 item 3: if this starts
    # failing, OAuthenticator changed and AdminsMustBeAllowed may no longer be needed.
    model = signed_in("prof", ["visitors"], admin_users={"prof"})
    assert model is not None and model["admin"] is True
