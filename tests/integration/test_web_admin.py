"""The admin page served by the real ops HTTP server on port 0 over a real SQLite file:
token handling, refusals, escaping, no PHI, and a database that is gone."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from ecg_gateway.ops import ops_app, start_ops_server
from ecg_gateway.store.db import make_engine, make_session_factory, upgrade_to_head
from ecg_gateway.store.models import Event, Job, Result
from ecg_gateway.web import admin_routes
from tests.support.admin_rows import CANARY, add_ecg
from tests.support.browser import Dom

Server = Callable[..., str]


def _health() -> dict[str, dict[str, Any]]:
    return {"database": {"ok": True}, "model": {"ok": False}}


@pytest.fixture
def sessions(sqlite_url: str) -> Iterator[Any]:
    """SQLite only: the page's queries run on PostgreSQL in test_admin_store."""
    upgrade_to_head(sqlite_url)
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def serve() -> Iterator[Server]:
    servers = []

    def start(sessions: Any, token: str | None) -> str:
        server = start_ops_server("127.0.0.1", 0, ops_app(_health, extra_routes=admin_routes(sessions, token, _health)))
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
             method: str | None = None) -> tuple[int, str, dict[str, str]]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        response = urllib.request.build_opener(NoRedirect).open(request, timeout=10)
        return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def test_without_a_token_retry_is_disabled_and_refused(sessions: Any, serve: Server) -> None:
    dead = add_ecg(sessions, job_state="dead", category=None, last_error="decode failed: <script>alert(1)</script>")
    base = serve(sessions, None)
    status, html, headers = _request(f"{base}/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in \
        headers["Content-Security-Policy"]
    dom = Dom(html)
    assert dom.ids["ready"] == "NOT READY" and "Retry is disabled" in dom.ids["retry-disabled"]
    (button,) = dom.buttons
    assert button["value"] == f"job:{dead['job']}" and "disabled" in button
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not any(value in html for value in CANARY.values())
    status, html, _ = _request(f"{base}/retry", data=f"target=job:{dead['job']}&token=".encode())
    assert status == 403 and "no http.admin_token is configured" in html
    with sessions() as s:
        assert s.get_one(Job, dead["job"]).state == "dead"


def test_token_checks_and_bad_requests(sessions: Any, serve: Server) -> None:
    dead = add_ecg(sessions, job_state="dead", category=None)
    base = serve(sessions, "tok-123")
    assert _request(f"{base}/", data=b"x=1")[0] == 405
    assert _request(f"{base}/retry")[0] == 405
    assert _request(f"{base}/retry", data=b"target=job:1&token=" + b"x" * 5000)[0] == 413
    assert _request(f"{base}/retry", data=b"target=jobs:1&token=tok-123")[0] == 400
    assert _request(f"{base}/retry", data=b"target=job:1&token=tok-1234")[0] == 403
    status, _, headers = _request(f"{base}/retry", data=f"target=job:{dead['job']}".encode(),
                                  headers={"Authorization": "Bearer tok-123"})
    assert status == 303 and headers["Location"] == f"/?notice=requeued&target=job+{dead['job']}"
    status, _, headers = _request(f"{base}/retry", data=f"target=job:{dead['job']}&token=tok-123".encode())
    assert status == 303 and headers["Location"].startswith("/?notice=unchanged")  # not dead any more
    with sessions() as s:
        assert s.get_one(Job, dead["job"]).state == "queued"
        kinds = [e.kind for e in s.scalars(select(Event).where(Event.kind.like("admin_%")).order_by(Event.id))]
    assert kinds == ["admin_denied", "admin_jobs_requeue"]
    delivered = add_ecg(sessions)["outbound"]  # the CLI's state check, the page's answer
    status, _, headers = _request(f"{base}/retry", data=f"target=outbound:{delivered}&token=tok-123".encode())
    assert status == 303 and headers["Location"].startswith("/?notice=unchanged")
    _, html, _ = _request(f"{base}/?notice=requeued&target=<b>x</b>")
    assert Dom(html).ids["notice"] == "Requeued <b>x</b>." and "<b>x</b>" not in html
    assert _request(f"{base}/?notice=%3Ci%3Efree%20text")[1].count("free text") == 0


def test_page_says_database_unavailable(serve: Server) -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    base = serve(make_session_factory(engine), "tok")
    status, html, _ = _request(f"{base}/")
    assert status == 503 and "Database unavailable (OperationalError)" in html
    engine.dispose()


def test_page_shows_measurements_statements_and_pdf_counts(sessions: Any, serve: Server) -> None:
    """Issue #27: what the cart would print (measured values only) and how many PDFs were late."""
    ids = add_ecg(sessions)
    with sessions.begin() as s:
        result = s.get_one(Result, ids["result"])
        result.measurements = {"heart_rate_bpm": 61.4, "qrs_ms": 88.0, "qt_ms": 380.0}
        result.statements = [{"code": "IMI", "description": "inferior MI", "probability": 0.8}]
        s.add(Event(kind="oru_pdf_late", outbound_id=ids["outbound"], detail={}))
        s.add(Event(kind="oru_pdf_missing", outbound_id=ids["outbound"], detail={}))
        s.add(Event(kind="oru_pdf_late", outbound_id=ids["outbound"], detail={}))
    _, html, _ = _request(f"{serve(sessions, None)}/")
    assert "rate 61 QRS 88 QT 380" in html and "PR " not in html  # not measured: absent
    assert "<td>IMI</td>" in html
    assert "ORU PDFs late (sent in a correction)</td><td>2" in html
    assert "ORU PDFs missing</td><td>1" in html
