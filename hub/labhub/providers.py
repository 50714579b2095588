"""OAuthenticator's providers: named admins pass the allow rules; clear refusal pages.

OAuthenticator 17 admits `admin_users` before any allow rule, and JupyterHub adds them
to `allowed_users`: a provider account that merely carried an admin's name (on GitHub
the account `admin` is a stranger's; on a campus provider, any visitor called so) got
in, as admin. Here ADMIN_USERS are `admins_by_name` instead: a signed-in user becomes
admin only after the allow rules (groups, organisations, domains, ALLOWED_USERS)
admitted them like anyone else; everyone else gets the 403 page.

When the hub trades the callback's one-time code for tokens and the provider says no
(the code was already used: a replayed or bookmarked callback, the back button; or it
expired), OAuthenticator 17 lets tornado's HTTPClientError escape and the user sees a
500 "Unhandled error". Here the same case is a 403 that says what happened and what
to do, and an unreachable provider is a 502 that says so. Same class names, so the
configuration sections (c.GenericOAuthenticator, ...) are unchanged.
"""

from __future__ import annotations

from typing import Any

from oauthenticator.cilogon import CILogonOAuthenticator as _CILogon
from oauthenticator.generic import GenericOAuthenticator as _Generic
from oauthenticator.github import GitHubOAuthenticator as _GitHub
from oauthenticator.google import GoogleOAuthenticator as _Google
from oauthenticator.oauth2 import OAuthenticator
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Set, Unicode

CODE_REFUSED = (
    "The login provider refused to complete this sign-in: its one-time code was already "
    "used or has expired (for example after going back in the browser, or opening an old "
    "link). Start again from the hub's login page."
)
PROVIDER_FAILED = (
    "The hub could not complete the sign-in with the login provider ({reason}). Try again "
    "in a moment; if it keeps failing, tell the hub's administrators (the hub's log has "
    "the details)."
)


class ExplainedTokenErrors:
    """Turns a failed code-for-token exchange into a page that explains it."""

    async def get_token_info(self, handler: Any, params: dict[str, Any]) -> Any:
        try:
            return await super().get_token_info(handler, params)  # type: ignore[misc]
        except HTTPClientError as error:
            if 400 <= error.code < 500:
                raise web.HTTPError(403, CODE_REFUSED) from error
            reason = "no answer" if error.code == 599 else f"it answered {error.code}"
            raise web.HTTPError(502, PROVIDER_FAILED.format(reason=reason)) from error


class AdminsMustBeAllowed(OAuthenticator):  # type: ignore[misc]
    """Makes `admins_by_name` admins only after the allow rules admitted them."""

    admins_by_name = Set(
        Unicode(),
        config=True,
        help="""Usernames (ADMIN_USERS, full identities such as ann@uni.edu) made admins
        once signed in and allowed like anyone else. Unlike `admin_users`, the name alone
        lets nobody in.""",
    )

    async def run_post_auth_hook(self, handler: Any, auth_model: dict[str, Any]) -> Any:
        # JupyterHub calls this only for users that check_allowed (or allow_all) admitted.
        if auth_model["name"] in self.admins_by_name:
            auth_model["admin"] = True
        return await super().run_post_auth_hook(handler, auth_model)


class GitHubOAuthenticator(AdminsMustBeAllowed, ExplainedTokenErrors, _GitHub):  # type: ignore[misc]
    pass


class GoogleOAuthenticator(AdminsMustBeAllowed, ExplainedTokenErrors, _Google):  # type: ignore[misc]
    pass


class GenericOAuthenticator(AdminsMustBeAllowed, ExplainedTokenErrors, _Generic):  # type: ignore[misc]
    pass


class CILogonOAuthenticator(AdminsMustBeAllowed, ExplainedTokenErrors, _CILogon):  # type: ignore[misc]
    pass
