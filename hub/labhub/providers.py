"""OAuthenticator's providers, with a clear page when the provider refuses a sign-in.

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
from tornado import web
from tornado.httpclient import HTTPClientError

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


class GitHubOAuthenticator(ExplainedTokenErrors, _GitHub):  # type: ignore[misc]
    pass


class GoogleOAuthenticator(ExplainedTokenErrors, _Google):  # type: ignore[misc]
    pass


class GenericOAuthenticator(ExplainedTokenErrors, _Generic):  # type: ignore[misc]
    pass


class CILogonOAuthenticator(ExplainedTokenErrors, _CILogon):  # type: ignore[misc]
    pass
