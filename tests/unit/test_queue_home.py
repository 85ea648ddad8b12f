"""The queue has one home: no state change of a ``jobs``/``outbound`` row outside store/queue.py,
and no job is made anywhere else (a job is born waiting, through ``enqueue_triage``).

Reads the package's source (AST, and raw SQL strings) so the rule holds for code written later:
adding a state or a transition means changing ``store/queue.py`` and nothing else.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ecg_gateway

PACKAGE = Path(ecg_gateway.__file__).parent
HOME = PACKAGE / "store" / "queue.py"
QUEUE_MODELS = {"Job", "Outbound"}
#: Event kinds of queue transitions: recorded by store/queue.py only.
TRANSITION_EVENTS = {"triaged", "triage_failed", "sent", "delivered", "send_failed", "dead",
                     "admin_jobs_requeue", "admin_outbound_requeue", "outbound_retry"}
RAW_UPDATE = re.compile(r"\bUPDATE\s+(jobs|outbound)\b", re.IGNORECASE)


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != HOME)


def _offences(source: str, label: str) -> list[str]:
    """Each forbidden construct in ``source`` as 'label:line: what', in line order."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, label)):
        line = getattr(node, "lineno", 0)
        where = f"{label}:{line}"
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            first = node.args[0] if node.args else None
            if name == "update" and isinstance(first, ast.Name) and first.id in QUEUE_MODELS:
                found.append((line, f"{where}: update({first.id})"))
            if (name == "update" and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "__table__"):
                found.append((line, f"{where}: __table__.update()"))
            if name == "Job" and isinstance(node.func, ast.Name):
                found.append((line, f"{where}: Job(...)"))
            if name == "record_event" and len(node.args) > 1 and _kind(node.args[1]) & TRANSITION_EVENTS:
                found.append((line, f"{where}: record_event({sorted(_kind(node.args[1]))})"))
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [(line, f"{where}: .state =") for t in targets
                      if isinstance(t, ast.Attribute) and t.attr == "state"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and RAW_UPDATE.search(node.value):
            found.append((line, f"{where}: raw SQL {node.value[:40]!r}"))
    return [what for _, what in sorted(found)]


def _kind(node: ast.expr) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.JoinedStr):  # f"..." kinds: match on the literal prefix
        prefix = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
        return {k for k in TRANSITION_EVENTS if k.startswith(prefix)} or {prefix}
    return set()


def test_no_queue_state_change_outside_the_store_queue_module() -> None:
    offences = [o for path in _sources()
                for o in _offences(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert offences == []


def test_the_checker_finds_what_it_forbids() -> None:
    bad = ("from sqlalchemy import update\n"
           "s.execute(update(Outbound).values(state='delivered'))\n"
           "s.execute(Job.__table__.update().values(state='dead'))\n"
           "row.state = 'queued'\n"
           "s.execute(text('update jobs set state = 1'))\n"
           "record_event(s, 'delivered', outbound_id=1)\n"
           "record_event(s, f'oru_{x}', outbound_id=1)\n"
           "record_event(s, 'model_loaded')\n"
           "if row.state == 'dead': pass\n"
           "s.add(Job(kind='triage', message_id=1))\n")
    assert [o.split(": ", 1)[1] for o in _offences(bad, "bad.py")] == [
        "update(Outbound)", "__table__.update()", ".state =", "raw SQL 'update jobs set state = 1'",
        "record_event(['delivered'])", "Job(...)"]
