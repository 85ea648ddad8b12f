"""Ops HTTP endpoint: ``/healthz`` (alive), ``/readyz`` (each check named), ``/metrics``.

prometheus-client's WSGI app answers metrics on every path, so a small dispatcher routes
the paths; wsgiref serves it on a daemon thread (a few requests a minute from a scraper).
Queue depth and oldest-queued age are read from the database at scrape time.

Hardened against hostile clients (issue #29): every socket operation has a timeout, at most
``max_threads`` requests run at once (more get 503 at once, without a thread), and the admin
routes answer only to allowed ``Host`` names (a DNS-rebinding page cannot read them) and take
POSTs only from no ``Origin`` or an allowed one (Django's ALLOWED_HOSTS and CSRF origin check).
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.metrics import REGISTRY
from ecg_gateway.store.queue import depths

HealthCheck = Callable[[], dict[str, dict[str, Any]]]
#: Host names the admin routes always answer to (besides ``http.host`` and ``http.allowed_hosts``).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class QueueCollector(Collector):
    """Queue depth by table/state and the age of the oldest waiting row, from the database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("ecg_gateway_queue_depth", "Rows by table and state", labels=["table", "state"])
        oldest = GaugeMetricFamily("ecg_gateway_queue_oldest_age_seconds", "Age of the oldest waiting row",
                                   labels=["table"])
        try:
            with self._sessions() as session:
                for name, counts, first in depths(session):
                    for state, count in counts.items():
                        depth.add_metric([name, state], count)
                    oldest.add_metric([name], _age_seconds(session, first))
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB is down
            return []
        return [depth, oldest]


def _age_seconds(session: Session, first: Any) -> float:
    if first is None:
        return 0.0
    from datetime import datetime

    if isinstance(first, str):
        first = datetime.fromisoformat(first)
    if first.tzinfo is None:
        first = first.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - first).total_seconds())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        pass


def ops_app(health: HealthCheck, extra_routes: dict[str, Callable[..., Any]] | None = None,
            allowed_hosts: Iterable[str] = ()) -> Callable[..., Any]:
    """``extra_routes`` (the admin page) are guarded by the Host allow-list and Origin check."""
    metrics = make_wsgi_app(REGISTRY)
    routes = dict(extra_routes or {})
    hosts = LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _json(start_response, 200, {"status": "alive"})
        if path == "/readyz":
            checks = health()
            ready = all(check["ok"] for check in checks.values())
            return _json(start_response, 200 if ready else 503, {"ready": ready, "checks": checks})
        if path == "/metrics":
            return metrics(environ, start_response)
        if path in routes:
            refusal = _foreign_request(environ, hosts)
            if refusal is not None:
                return _json(start_response, 403 if "Origin" in refusal else 400, {"error": refusal})
            return routes[path](environ, start_response)
        return _json(start_response, 404, {"error": "not found"})

    return app


def _hostname(authority: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> the lower-case host name."""
    return (urlsplit(f"//{authority}").hostname or "").lower()


def _foreign_request(environ: dict[str, Any], hosts: frozenset[str]) -> str | None:
    """Why a request for the admin routes is refused, or None."""
    if _hostname(environ.get("HTTP_HOST", "")) not in hosts:
        return "Host not allowed (set http.allowed_hosts)"
    origin = environ.get("HTTP_ORIGIN")
    if environ.get("REQUEST_METHOD") == "POST" and origin is not None and _hostname(
            urlsplit(origin).netloc) not in hosts:
        return "Origin not allowed"
    return None


def _json(start_response: Callable[..., Any], code: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              503: "Service Unavailable"}.get(code, "")
    start_response(f"{code} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def start_ops_server(host: str, port: int, app: Callable[..., Any], *, timeout_s: float = 10.0,
                     max_threads: int = 16) -> WSGIServer:
    """Serve ``app`` on a daemon thread: ``timeout_s`` per socket operation, at most
    ``max_threads`` requests at once."""
    handler = type("_TimedHandler", (_QuietHandler,), {"timeout": timeout_s})
    server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=handler)
    server.slots = threading.BoundedSemaphore(max_threads)
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server


_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Content-Length: 17\r\nConnection: close\r\n\r\n{\"error\": \"busy\"}")


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per request, up to ``slots``; beyond it a 503 from the accept loop itself."""

    daemon_threads = True
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or vanished: nothing to report (no traceback on stderr)."""
