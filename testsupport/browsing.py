"""What Chromium does on a test host that a student's laptop never sees.

Containers starting and stopping on this host (the tests' own, other tests') add and
remove network interfaces. Chromium then aborts requests in flight
(ERR_NETWORK_CHANGED), shows its error page (chrome-error://) and reloads the page by
itself, which interrupts the navigation the test was waiting for. Browser tests try
again for these reasons only; any other error is the test's finding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Where Chromium goes when a request failed: a page at this URL is no server's answer.
ERROR_PAGE_URL = "chrome-error://"

_NETWORK_CHANGE_SIGNS = (
    "ERR_NETWORK_CHANGED",
    ERROR_PAGE_URL,
    # Chromium's own reload of the error page, racing the test's navigation.
    "is interrupted by another navigation",
)


def network_changed(error: object) -> bool:
    """Whether a Playwright error (or a request's failure text) is Chromium reacting to
    this host's network interfaces changing."""
    return any(sign in str(error) for sign in _NETWORK_CHANGE_SIGNS)


def despite_network_changes(navigate: Callable[[], T], attempts: int = 5) -> T:
    """``navigate()``, again (up to `attempts` tries) while Chromium aborts it for a
    network change: a Playwright error, or an `expect` that found Chromium's error page
    instead of the one it waited for; any other error at once."""
    from playwright.sync_api import Error

    for attempt in range(attempts):
        try:
            return navigate()
        except (Error, AssertionError) as error:
            if attempt == attempts - 1 or not network_changed(error):
                raise
            time.sleep(1)  # let the error page, or Chromium's reload, finish loading
    raise AssertionError("unreachable: the last attempt returns or raises")
