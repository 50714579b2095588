"""The hub counts the idle culler's stops: a stop by the culler's service that the hub
accepted is one `labhub_culls_total{reason="hub-idle"}` on the hub's own registry; stops by
anyone else, refused stops and other requests are not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from jupyterhub import orm
from jupyterhub.apihandlers.users import UserAPIHandler, UserServerAPIHandler
from labhub.culls import HUB_IDLE, IDLE_CULLER, is_idle_cull, log_and_count_culls
from prometheus_client import REGISTRY, generate_latest
from tornado.web import RequestHandler

pytestmark = pytest.mark.unit


def finished(
    handler_class: type[RequestHandler], method: str, status: int, requester: object
) -> RequestHandler:
    """A handler as the hub's log function sees it once the request is answered."""
    handler = object.__new__(handler_class)
    handler.request = SimpleNamespace(method=method)  # type: ignore[assignment]
    handler._status_code = status
    handler._jupyterhub_user = requester  # what JupyterHub's prepare() sets
    return handler


CULLER = orm.Service(name=IDLE_CULLER)


@pytest.mark.parametrize("status", [202, 204])
def test_a_stop_by_the_culler_is_a_cull(status: int) -> None:
    assert is_idle_cull(finished(UserServerAPIHandler, "DELETE", status, CULLER))


@pytest.mark.parametrize(
    ("handler_class", "method", "status", "requester"),
    [
        (UserServerAPIHandler, "DELETE", 204, orm.User(name="admin")),
        # A student may name themselves like the service and stop their own server.
        (UserServerAPIHandler, "DELETE", 204, orm.User(name=IDLE_CULLER)),
        (UserServerAPIHandler, "DELETE", 204, orm.Service(name="gpus")),
        (UserServerAPIHandler, "DELETE", 400, CULLER),
        (UserServerAPIHandler, "DELETE", 404, CULLER),
        (UserServerAPIHandler, "POST", 202, CULLER),
        (UserAPIHandler, "DELETE", 204, CULLER),
    ],
    ids=["admin", "user-named-like-the-culler", "gpu-service", "400", "404", "start", "user"],
)
def test_anything_else_is_not(
    handler_class: type[RequestHandler], method: str, status: int, requester: object
) -> None:
    assert not is_idle_cull(finished(handler_class, method, status, requester))


def culls_counted() -> float:
    value = REGISTRY.get_sample_value("labhub_culls_total", {"reason": HUB_IDLE})
    assert value is not None, "the hub-idle series exists before the first cull"
    return value


def test_the_log_function_counts_on_the_hubs_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[RequestHandler] = []
    monkeypatch.setattr("labhub.culls.log_request", logged.append)
    before = culls_counted()
    cull = finished(UserServerAPIHandler, "DELETE", 204, CULLER)
    log_and_count_culls(cull)
    log_and_count_culls(finished(UserServerAPIHandler, "DELETE", 204, orm.User(name="admin")))
    assert culls_counted() == before + 1
    assert len(logged) == 2 and logged[0] is cull
    assert b'labhub_culls_total{reason="hub-idle"}' in generate_latest(REGISTRY)
