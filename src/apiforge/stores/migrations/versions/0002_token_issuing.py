"""Token issuing: TOTP secrets on accounts, refresh-token families, TOTP replay marks.

Revision ID: 0002_token_issuing
Revises: 0001_identity_tables
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_token_issuing"
down_revision: str | None = "0001_identity_tables"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A nullable column needs no table copy, on SQLite either.
    op.add_column("accounts", sa.Column("totp_secret", sa.Text(), nullable=True))
    op.create_table(
        "refresh_families",
        sa.Column("family_id", sa.Text(), primary_key=True),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("account_version", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idle_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_refresh_families_account_id", "refresh_families", ["account_id"])
    op.create_table(
        "refresh_tokens",
        # SHA-256 of the token: the token itself is never stored.
        sa.Column("digest", sa.LargeBinary(), primary_key=True),
        sa.Column(
            "family_id",
            sa.Text(),
            sa.ForeignKey("refresh_families.family_id", name="refresh_tokens_family_fk"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"])
    op.create_table(
        "totp_steps",
        sa.Column("account_id", sa.Text(), primary_key=True),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("totp_steps")
    op.drop_index("ix_refresh_tokens_family_id", table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_index("ix_refresh_families_account_id", table_name="refresh_families")
    op.drop_table("refresh_families")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("totp_secret")
