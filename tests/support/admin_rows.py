"""Write the rows the receivers, the worker and the sender would write (test helper).

Each call makes one message (raw bytes + PHI identifiers, a canary the admin views must
never show), its triage job, optionally a result and an ORU row, in the states given, and
back-dates ``received_at`` on the database clock.
"""

from __future__ import annotations

import hashlib
import itertools

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from ecg_gateway.store.db import db_now_plus
from ecg_gateway.store.models import Job, Message, Outbound, Result

CANARY = {"patient_name": "ZZCANARY^PATIENT", "patient_id": "ZZPID-4711", "birth_date": "19010101"}
_SEQ = itertools.count(1)


def add_ecg(sessions: sessionmaker[Session], *, job_state: str = "done", category: str | None = "acute",
            outbound_state: str | None = "delivered", age_days: float = 0.0,
            last_error: str | None = None) -> dict[str, int | None]:
    n = next(_SEQ)
    raw = f"raw-ecg-bytes-{n}".encode()
    with sessions.begin() as s:
        dialect = s.get_bind().dialect.name
        msg = Message(source="dicom", idempotency_key=f"dicom:1.2.826.0.99.{n}", content_type="application/dicom",
                      sha256=hashlib.sha256(raw).hexdigest(), raw=raw, peer="CART1",
                      ecg_uid=f"1.2.826.0.99.{n}", identifiers=CANARY)
        s.add(msg)
        s.flush()
        job = Job(message_id=msg.id, state=job_state, attempts=1, max_attempts=3,
                  last_error=last_error if job_state == "dead" else None)
        s.add(job)
        s.flush()
        ids: dict[str, int | None] = {"message": msg.id, "job": job.id, "result": None, "outbound": None}
        if category is not None:
            res = Result(message_id=msg.id, job_id=job.id, category=category, p_normal=0.1,
                         p_abnormal_not_acute=0.1, p_subacute=0.1, p_acute=0.7, quality={},
                         model_id="test-model", model_sha256="ab" * 32, latency_ms=12.5)
            s.add(res)
            s.flush()
            ids["result"] = res.id
            if outbound_state is not None:
                row = Outbound(result_id=res.id, control_id=f"ECGGW{res.id:010d}", state=outbound_state,
                               attempts=1, max_attempts=3, destination="127.0.0.1:2576",
                               last_error="AR from the EHR" if outbound_state == "dead" else None)
                s.add(row)
                s.flush()
                ids["outbound"] = row.id
        s.execute(update(Message).where(Message.id == msg.id)
                  .values(received_at=db_now_plus(dialect, -age_days * 86400))
                  .execution_options(synchronize_session=False))
    return ids
