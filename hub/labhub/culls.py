"""Culls by the hub-wide idle culler, counted where the hub logs each request.

jupyterhub-idle-culler (a hub service, IDLE_TIMEOUT) stops an idle server with
DELETE /hub/api/users/<name>/server (or .../servers/<name>) and keeps no count. The hub
logs every request with its status and requester through tornado's `log_function`:
`log_and_count_culls` is JupyterHub's own `log_request` plus one check, so every stop the
culler's service made and the hub accepted (202 or 204) is counted as
`labhub_culls_total{reason="hub-idle"}` on the hub's `/hub/metrics`, with no second record
to keep in step. GPU holders the GPU service stops are counted by it, from its audit log
(`labhub.gpu.metrics`): those requests are the `gpus` service's, so no stop is counted
twice. The count starts again at 0 when the hub restarts; Prometheus's `increase()` reads
across that.
"""

from __future__ import annotations

from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.log import log_request
from prometheus_client import Counter
from tornado.web import RequestHandler

# The hub service that runs jupyterhub-idle-culler (jupyterhub_config.py).
IDLE_CULLER = "idle-culler"
# The reason the GPU service also gives when hub activity stopped a GPU holder.
HUB_IDLE = "hub-idle"
# The statuses of an accepted stop: 204 stopped, 202 stopping.
STOPPED = (202, 204)

CULLS = Counter("labhub_culls", "Servers culled, by reason", ["reason"])
# The series exists from the start at 0, so that increase() counts the first cull.
CULLS.labels(reason=HUB_IDLE)


def is_idle_cull(handler: RequestHandler) -> bool:
    """Whether a finished request was the idle culler's service stopping a server (a user
    who happens to be named like the service does not count)."""
    if not (
        isinstance(handler, UserServerAPIHandler)
        and handler.request.method == "DELETE"
        and handler.get_status() in STOPPED
    ):
        return False
    # Known once the stop was accepted: only an authenticated requester gets 202 or 204.
    requester = handler.current_user
    return getattr(requester, "kind", None) == "service" and requester.name == IDLE_CULLER


def log_and_count_culls(handler: RequestHandler) -> None:
    """The hub's request log function (tornado_settings["log_function"])."""
    log_request(handler)
    if is_idle_cull(handler):
        CULLS.labels(reason=HUB_IDLE).inc()
