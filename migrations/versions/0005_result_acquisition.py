"""results keep what the ORU needs from the decoded ECG: ``acquired_at`` and ``tracing``

The worker decodes each message and now stores on its result the acquisition time (ISO 8601
as the cart gave it) and, for an ORU with a PDF, the waveform, so the sender no longer
decodes the raw bytes again (issue #31). Existing rows: results whose ORU is still to be
composed (an outbound row without a payload) are backfilled here by decoding their message
once; an undecodable one stays NULL and its ORU goes without the PDF, as it did before when
the sender's decode failed. Results whose ORUs were all composed keep NULL: their bytes are
fixed and nothing reads these columns for them. No row is added or removed.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

TO_COMPOSE = sa.text(
    "SELECT r.id, m.content_type, m.raw FROM results r JOIN messages m ON m.id = r.message_id "
    "WHERE EXISTS (SELECT 1 FROM outbound o WHERE o.result_id = r.id AND o.payload IS NULL) "
    "ORDER BY r.id")


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("acquired_at", sa.String(40), nullable=True))
        batch.add_column(sa.Column("tracing", sa.LargeBinary(), nullable=True))
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    """Decode, once, the messages whose ORU the sender has yet to compose."""
    from ecg_gateway.ecg import pack_tracing
    from ecg_gateway.inbound.decode import decode_message

    update = sa.text("UPDATE results SET acquired_at = :acquired_at, tracing = :tracing WHERE id = :id")
    for result_id, content_type, raw in conn.execute(TO_COMPOSE).all():
        try:
            ecg = decode_message(content_type, bytes(raw))
        except Exception:  # noqa: BLE001 - as the sender did: the ORU goes without a PDF
            continue
        conn.execute(update, {"id": result_id, "tracing": pack_tracing(ecg),
                              "acquired_at": ecg.acquired_at.isoformat() if ecg.acquired_at else None})


def downgrade() -> None:
    # plain ALTER TABLE … DROP COLUMN (SQLite >= 3.35): a batch copy would drop ``results``,
    # which ``outbound`` rows reference
    op.drop_column("results", "tracing")
    op.drop_column("results", "acquired_at")
