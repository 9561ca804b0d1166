"""Per-request work every route shares, as one ASGI middleware: the request id (X-Request-Id
honoured when it is sane, returned either way), 503 for API requests once the server drains,
the in-flight count a drain waits on, the HTTP request counter, and one log line per request
with what the route added (`request.state.log_fields`)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from server.lifecycle import Lifecycle
from server.metrics import ServerMetrics

logger = logging.getLogger("retserve.request")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
API_PREFIX = "/v1/"


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestMiddleware:
    def __init__(self, app, lifecycle: Lifecycle, metrics: ServerMetrics):
        self.app, self.lifecycle, self.metrics = app, lifecycle, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["log_fields"] = {}
        is_api = scope["path"].startswith(API_PREFIX)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        if is_api and self.lifecycle.is_draining:
            await self._refuse_draining(send_with_id)
        else:
            if is_api:
                self.lifecycle.enter()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if is_api:
                    self.lifecycle.leave()
        route = scope.get("route")
        route_path = getattr(route, "path", None) or "unmatched"
        self.metrics.http_requests.labels(self.metrics.model_name, route_path, str(status)).inc()
        fields = {"request_id": request_id, "method": scope["method"], "path": scope["path"],
                  "status": status, "ms": round((time.perf_counter() - start) * 1000, 1),
                  **state["log_fields"]}
        logger.log(logging.INFO if is_api else logging.DEBUG, "%s %s %s", scope["method"],
                   scope["path"], status, extra={"fields": fields})

    @staticmethod
    async def _refuse_draining(send) -> None:
        body = json.dumps({"error": {"message": "the server is shutting down; retry on another "
                                     "replica", "type": "service_unavailable", "param": None,
                                     "code": "shutting_down"}}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
