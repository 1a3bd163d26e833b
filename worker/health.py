"""Liveness and readiness, served with /metrics by one small HTTP server."""

# /metrics  Prometheus exposition (text or OpenMetrics, by the Accept header)
# /healthz  200 while the loop keeps turning; 503 once it has been stuck for STALL_SECONDS
# /readyz   200 once the model is loaded and the group has assigned this replica its
#           partitions (an empty share counts, so a spare replica does not block a rollout);
#           503 while starting, while the group reassigns partitions, reconnecting,
#           retrying a batch, blocked on an unanswering broker (a frozen one keeps its
#           connections open) or shutting down

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

STALL_SECONDS = 300.0  # longer than the slowest healthy batch: flush, commit and backoff
BLOCKED_SECONDS = 45.0  # not ready past this without a loop turn (the worker: its session)


class Health:
    """What the loop reports about itself, read by the probes."""

    def __init__(
        self,
        stall_after: float = STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        blocked_after: float = BLOCKED_SECONDS,
    ) -> None:
        self._clock = clock
        self._stall_after = stall_after
        self._blocked_after = blocked_after
        self._last_tick = clock()
        self._ready = False
        self._reason = "starting"

    def set_ready(self) -> None:
        if not self._ready:
            log.info("ready")
        self._ready, self._reason = True, "ready"

    def set_not_ready(self, reason: str) -> None:
        if self._ready or reason != self._reason:
            log.info("not ready reason=%s", reason)
        self._ready, self._reason = False, reason

    def tick(self) -> None:
        """Called by the loop on every turn: proof that it is not stuck."""
        self._last_tick = self._clock()

    @property
    def ready(self) -> bool:
        return self.readiness()[0]

    def readiness(self) -> tuple[bool, str]:
        """The loop's own word, unless it is blocked (in a flush or a commit) too long."""
        blocked = self._clock() - self._last_tick
        if self._ready and blocked > self._blocked_after:
            return False, f"blocked for {blocked:.0f} s waiting on the broker"
        return self._ready, self._reason

    def liveness(self) -> tuple[bool, str]:
        stuck = self._clock() - self._last_tick
        if stuck > self._stall_after:
            return False, f"loop stuck for {stuck:.0f} s"
        return True, "alive"


class HealthServer:
    """/metrics, /healthz and /readyz on one port, in a daemon thread."""

    def __init__(
        self,
        health: Health,
        registry: CollectorRegistry = REGISTRY,
        port: int = 9108,
        host: str = "0.0.0.0",
    ) -> None:
        handler = _handler(health, registry)
        self._server = ThreadingHTTPServer((host, port), handler)  # OSError if the port is taken
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="faultwatch-http", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(health: Health, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, encoder(registry), content_type)
            elif path in ("/healthz", "/readyz"):
                ok, reason = health.liveness() if path == "/healthz" else health.readiness()
                self._reply(200 if ok else 503, f"{reason}\n".encode(), "text/plain")
            else:
                self._reply(404, b"try /metrics, /healthz or /readyz\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # probes every few seconds would drown the worker's own log

    return Handler
