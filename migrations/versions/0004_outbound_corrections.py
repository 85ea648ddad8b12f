"""a result may have a second ORU, the correction that brings a late PDF (outbound.kind)

``outbound.result_id`` loses its UNIQUE constraint (an index stays), and ``outbound.kind``
says which ORU a row is: ``result`` (the first) or ``correction`` (OBR-25 C with the PDF).
Existing rows become ``result``. Downgrade deletes correction rows first (the constraint
could not come back with them).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbound") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="result"))
        batch.drop_constraint("uq_outbound_result_id", type_="unique")
        batch.create_index("ix_outbound_result_id", ["result_id"], unique=False)


def downgrade() -> None:
    op.execute("DELETE FROM outbound WHERE kind <> 'result'")
    with op.batch_alter_table("outbound") as batch:
        batch.drop_index("ix_outbound_result_id")
        batch.create_unique_constraint("uq_outbound_result_id", ["result_id"])
        batch.drop_column("kind")
