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
