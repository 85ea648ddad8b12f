"""The admin page at ``/`` on the ops port: queue counts, the last 50 ECGs, dead letters.

Server-rendered HTML (string templates, every value through ``html.escape``; no scripts:
the Content-Security-Policy forbids them). No PHI: internal ids, states, categories, codes
and times only. ``POST /retry`` requeues one dead job or ORU (``store.queue``, the CLI's path
and state check); it needs ``http.admin_token``
(form field ``token`` or ``Authorization: Bearer``), compared in constant time. With no
token configured the buttons are disabled and every POST is refused. The token is the
only credential: serve the ops port on localhost or behind a TLS proxy.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable
from html import escape
from typing import Any
from urllib.parse import parse_qs, urlencode

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway import __version__
from ecg_gateway.audit import record_event
from ecg_gateway.errors import AdminError
from ecg_gateway.store.overview import dead_letters, pdf_counts, recent_ecgs
from ecg_gateway.store.queue import requeue_jobs, retry_outbound
from ecg_gateway.store.stats import status_counts

log = structlog.get_logger(__name__)

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
MAX_FORM_BYTES = 4096
RECENT = 50
_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                "form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
_NOTICES = {"requeued": "Requeued {target}.", "unchanged": "{target} was not dead: nothing to do."}
_CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#f2f2f2}
.acute{color:#b00;font-weight:bold}.bad{color:#b00}.ok{color:#070}
.notice{background:#eef;padding:.5em}.muted{color:#777}"""


def admin_routes(sessions: sessionmaker[Session], admin_token: str | None,
                 health: Callable[[], dict[str, dict[str, Any]]]) -> dict[str, Wsgi]:
    """The routes ops.ops_app adds beside /healthz, /readyz and /metrics."""
    page = AdminPage(sessions, admin_token, health)
    return {"/": page.index, "/retry": page.retry}


class AdminPage:
    def __init__(self, sessions: sessionmaker[Session], admin_token: str | None,
                 health: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self._sessions = sessions
        self._token = admin_token or None
        self._health = health

    # --- GET / ----------------------------------------------------------------------------

    def index(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _respond(start_response, 405, _page("Method not allowed", "<p>Use GET.</p>"),
                            [("Allow", "GET, HEAD")])
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            with self._sessions() as s:
                counts, recent, dead = status_counts(s), recent_ecgs(s, RECENT), dead_letters(s)
                pdfs = pdf_counts(s)
        except SQLAlchemyError as exc:
            body = f"<p class=bad>Database unavailable ({escape(type(exc).__name__)}).</p>"
            return _respond(start_response, 503, _page("ecg-gateway", body + self._health_html()))
        parts = [_notice(query), self._health_html(), _counts_html(counts, pdfs),
                 self._dead_html(dead), _recent_html(recent)]
        return _respond(start_response, 200, _page("ecg-gateway", "".join(parts)))

    def _health_html(self) -> str:
        try:
            checks = self._health()
        except Exception as exc:  # noqa: BLE001 - the page must render whatever fails
            return f"<p class=bad>health checks failed: {escape(type(exc).__name__)}</p>"
        items = "".join(f"<li>{escape(name)}: <span class={'ok' if c.get('ok') else 'bad'}>"
                        f"{'ok' if c.get('ok') else 'NOT OK'}</span></li>"
                        for name, c in checks.items())
        ready = all(c.get("ok") for c in checks.values())
        return (f"<h2>Readiness: <span id=ready class={'ok' if ready else 'bad'}>"
                f"{'ready' if ready else 'NOT READY'}</span></h2><ul>{items}</ul>")

    def _dead_html(self, dead: dict[str, list[dict[str, Any]]]) -> str:
        disabled = "" if self._token else " disabled"
        note = ("<p>Enter the admin token, then press Retry on a row.</p>"
                "<p><label>Admin token <input type=password name=token autocomplete=off required>"
                "</label></p>" if self._token else
                "<p class=muted id=retry-disabled>Retry is disabled: no http.admin_token is "
                "configured.</p>")
        jobs = _table(["job", "message", "attempts", "last error", "updated", ""],
                      [[j["id"], j["message_id"], j["attempts"], j["last_error"], j["updated_at"],
                        _button(f"job:{j['id']}", disabled)] for j in dead["jobs"]], "dead-jobs")
        oru = _table(["outbound", "result", "control id", "category", "attempts", "last error",
                      "updated", ""],
                     [[o["id"], o["result_id"], o["control_id"], o["category"], o["attempts"],
                       o["last_error"], o["updated_at"], _button(f"outbound:{o['id']}", disabled)]
                      for o in dead["outbound"]], "dead-outbound")
        total = len(dead["jobs"]) + len(dead["outbound"])
        return (f"<h2 id=dead-title class={'bad' if total else 'ok'}>Dead letters: {total}</h2>"
                f"<form method=post action=/retry>{note}"
                f"<h3>Triage jobs ({len(dead['jobs'])})</h3>{jobs}"
                f"<h3>ORU deliveries ({len(dead['outbound'])})</h3>{oru}</form>")

    # --- POST /retry ----------------------------------------------------------------------

    def retry(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        peer = environ.get("REMOTE_ADDR")
        if environ.get("REQUEST_METHOD") != "POST":
            return _respond(start_response, 405, _page("Method not allowed", "<p>Use POST.</p>"),
                            [("Allow", "POST")])
        if self._token is None:
            disabled = "<p>Admin actions are disabled: no http.admin_token is configured.</p>"
            return _respond(start_response, 403, _page("Forbidden", disabled))
        form = _read_form(environ)
        if form is None:
            return _respond(start_response, 413, _page("Too large", "<p>Form too large.</p>"))
        if not self._authorized(environ, form):
            self._record("admin_denied", peer, {"path": "/retry"})
            log.warning("admin_denied", peer=peer, path="/retry")
            return _respond(start_response, 403, _page("Forbidden", "<p>Wrong admin token.</p>"))
        table, _, raw_id = form.get("target", "").partition(":")
        if table not in ("job", "outbound") or not raw_id.isdigit():
            return _respond(start_response, 400, _page("Bad request", "<p>Unknown target.</p>"))
        target = f"{table} {int(raw_id)}"
        try:
            if table == "job":
                requeue_jobs(self._sessions, [int(raw_id)], actor="web", peer=peer)
            else:
                retry_outbound(self._sessions, [int(raw_id)], actor="web", peer=peer)
            notice = "requeued"
        except AdminError:
            notice = "unchanged"
        except SQLAlchemyError as exc:
            return _respond(start_response, 503, _page(
                "Unavailable", f"<p>Database unavailable ({escape(type(exc).__name__)}).</p>"))
        log.info("admin_retry", peer=peer, target=target, result=notice)
        location = "/?" + urlencode({"notice": notice, "target": target})
        start_response("303 See Other",
                       [("Location", location), ("Content-Length", "0"), *_HEADERS])
        return [b""]

    def _authorized(self, environ: dict[str, Any], form: dict[str, str]) -> bool:
        assert self._token is not None
        header = environ.get("HTTP_AUTHORIZATION", "")
        given = header[7:] if header.startswith("Bearer ") else form.get("token", "")
        return hmac.compare_digest(given.encode(), self._token.encode())

    def _record(self, kind: str, peer: str | None, detail: dict[str, Any]) -> None:
        try:
            with self._sessions.begin() as s:
                record_event(s, kind, actor="web", peer=peer, detail=detail)
        except SQLAlchemyError as exc:
            log.warning("admin_event_not_recorded", kind=kind, error=type(exc).__name__)


# --- rendering ------------------------------------------------------------------------------

def _read_form(environ: dict[str, Any]) -> dict[str, str] | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_FORM_BYTES:
        return None
    body = environ["wsgi.input"].read(length).decode("utf-8", "replace") if length > 0 else ""
    return {k: v[0] for k, v in parse_qs(body, max_num_fields=20).items()}


def _notice(query: dict[str, list[str]]) -> str:
    template = _NOTICES.get(query.get("notice", [""])[0])
    if template is None:
        return ""
    text = template.format(target=query.get("target", [""])[0])
    return f"<p class=notice id=notice>{escape(text)}</p>"


def _counts_html(counts: dict[str, Any], pdfs: dict[str, int]) -> str:
    def cells(section: str) -> str:
        return ", ".join(f"{escape(k)}={v}" for k, v in sorted(counts[section].items())) or "none"

    return ("<h2>Queue</h2>" + _table(["", "counts"], [
        ["messages", str(counts["messages"])], ["jobs", _Raw(cells("jobs"))],
        ["results", _Raw(cells("results"))], ["outbound", _Raw(cells("outbound"))],
        ["ORU PDFs late (sent in a correction)", str(pdfs["late"])],
        ["ORU PDFs missing", str(pdfs["missing"])]], "queue"))


#: measurement key -> column text on the page (units in the header)
_SHOWN = (("heart_rate_bpm", "rate"), ("pr_ms", "PR"), ("qrs_ms", "QRS"), ("qt_ms", "QT"),
          ("qtc_bazett_ms", "QTcB"), ("qtc_fridericia_ms", "QTcF"), ("p_axis_deg", "P"),
          ("qrs_axis_deg", "QRS axis"), ("t_axis_deg", "T"))


def _measured(values: dict[str, float]) -> str:
    """E.g. ``rate 61 PR 152 QRS 88 QT 380 QTcB 384``: what was measured, nothing invented."""
    return " ".join(f"{name} {values[key]:.0f}" for key, name in _SHOWN if key in values)


def _recent_html(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        category = escape(r["category"] or "")
        body.append([r["message_id"], r["source"], r["received_at"], r["job_id"], r["job_state"],
                     _Raw(f"<span class={category}>{category}</span>"), r["triage_ms"],
                     _measured(r["measurements"]), " ".join(r["statements"]),
                     r["outbound_id"], r["outbound_state"], r["delivered_at"],
                     r["received_to_delivered_s"]])
    return (f"<h2>Last {RECENT} ECGs</h2>" + _table(
        ["message", "source", "received", "job", "job state", "category", "triage ms",
         "measurements (ms, /min, degrees)", "statements", "outbound", "ORU state", "delivered",
         "received to delivered s"], body, "recent"))


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    return "" if value is None else escape(str(value))


def _table(head: list[str], rows: list[list[Any]], table_id: str) -> str:
    if not rows:
        return f"<p class=muted id={table_id}>none</p>"
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table id={table_id}><tr>{th}</tr>{trs}</table>"


def _button(target: str, disabled: str) -> _Raw:
    return _Raw(f"<button type=submit name=target value='{escape(target)}'{disabled}>"
                "Retry</button>")


def _page(title: str, body: str) -> str:
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{escape(title)} <span class=muted>"
            f"{escape(__version__)}</span></h1><p class=muted>generated {escape(now)} · "
            f"<a href=/>refresh</a> · <a href=/metrics>metrics</a> · <a href=/readyz>readyz</a>"
            f"</p>{body}</body></html>")


def _respond(start_response: Callable[..., Any], code: int, html: str,
             extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = html.encode("utf-8")
    reasons = {200: "OK", 400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
               413: "Payload Too Large", 503: "Service Unavailable"}
    start_response(f"{code} {reasons.get(code, '')}", [
        ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data))),
        *_HEADERS, *(extra or [])])
    return [data]
