"""JupyterHub's SharedPasswordAuthenticator, answering 403 (not 500) to any password.

JupyterHub 6.1.1 compares passwords with `secrets.compare_digest(str, str)`, which
raises TypeError for non-ASCII strings: typing "pässword" at the login form gave a
500 (found by tests/test_fuzz.py). The shared passwords `make env` generates are
ASCII (hex and alphanumerics), so a non-ASCII password is simply a wrong one here.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.authenticators.shared import (
    SharedPasswordAuthenticator as _SharedPasswordAuthenticator,
)


class SharedPasswordAuthenticator(_SharedPasswordAuthenticator):  # type: ignore[misc]
    """Same configuration (same class name) and behaviour; non-ASCII passwords fail."""

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> Any:
        password = data.get("password")
        if not isinstance(password, str) or not password.isascii():
            return None
        return await super().authenticate(handler, data)
