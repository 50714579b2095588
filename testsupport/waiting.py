"""The one polling loop of the tests: ask until the answer is yes, or say what never came."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
# A failure message shows this much of the last answer (a hub user model can be long).
_SHOWN = 500


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    done: Callable[[T], object] = bool,
    interval: float = 1.0,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Call `condition` every `interval` s until what it returns is `done` (by default:
    truthy); return that value.

    Errors of the `ignoring` types mean "not yet" (a service still starting refuses
    connections); any other error ends the wait at once, so a condition can stop early
    by raising (a spawn that failed). After `timeout` s, TimeoutError names `what` was
    awaited and the last value or error seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except ignoring as error:
            last = f"last error: {error!r}"
        else:
            if done(value):
                return value
            last = f"last value: {value!r}"
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"waited {timeout:g} s for {what}; {last[:_SHOWN]}")
        time.sleep(min(interval, left))
