"""Ops HTTP endpoint: ``/healthz`` (alive), ``/readyz`` (each check named), ``/metrics``.

prometheus-client's WSGI app answers metrics on every path, so a small dispatcher routes
the paths; wsgiref serves it on a daemon thread (a few requests a minute from a scraper).
Queue depth and oldest-queued age are read from the database at scrape time.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.metrics import REGISTRY
from ecg_gateway.store.models import Job, Outbound

HealthCheck = Callable[[], dict[str, dict[str, Any]]]


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
                for name, table, waiting in (("jobs", Job, "queued"), ("outbound", Outbound, "pending")):
                    for state, count in session.execute(select(table.state, func.count()).group_by(table.state)):
                        depth.add_metric([name, state], count)
                    first = session.scalar(select(func.min(table.created_at)).where(table.state == waiting))
                    oldest.add_metric([name], _age_seconds(session, first))
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB is down
            return []
        return [depth, oldest]


def _age_seconds(session: Session, first: Any) -> float:
    if first is None:
        return 0.0
    from datetime import datetime, timezone

    if isinstance(first, str):
        first = datetime.fromisoformat(first)
    if first.tzinfo is None:
        first = first.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - first).total_seconds())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


def ops_app(health: HealthCheck, extra_routes: dict[str, Callable[..., Any]] | None = None) -> Callable[..., Any]:
    metrics = make_wsgi_app(REGISTRY)
    routes = dict(extra_routes or {})

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _json(start_response, 200, {"status": "alive"})
        if path == "/readyz":
            checks = health()
            ready = all(check["ok"] for check in checks.values())
            return _json(start_response, 200 if ready else 503, {"ready": ready, "checks": checks})
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path in routes:
            return routes[path](environ, start_response)  # type: ignore[no-any-return]
        return _json(start_response, 404, {"error": "not found"})

    return app


def _json(start_response: Callable[..., Any], code: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(code, "")
    start_response(f"{code} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def start_ops_server(host: str, port: int, app: Callable[..., Any]) -> WSGIServer:
    server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
