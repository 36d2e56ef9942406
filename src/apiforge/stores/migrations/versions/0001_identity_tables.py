"""Identity tables: applications, api_keys, accounts.

Revision ID: 0001_identity_tables
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_identity_tables"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column("application_id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("owner_account_id", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text(), primary_key=True),
        sa.Column("env", sa.Text(), nullable=False),
        sa.Column(
            "application_id",
            sa.Text(),
            sa.ForeignKey("applications.application_id", name="api_keys_application_fk"),
            nullable=False,
        ),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_by", sa.Text(), nullable=True),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("overlap_until", sa.DateTime(timezone=True), nullable=True),
        # Fixed DDL: the database itself refuses a status the domain does not know.
        sa.CheckConstraint("status IN ('active', 'revoked')", name="api_keys_status_known"),
    )
    op.create_index("ix_api_keys_application_id", "api_keys", ["application_id"])
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.Text(), primary_key=True),
        sa.Column("username", sa.Text(), nullable=False, unique=True),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'locked', 'deleted')",
            name="accounts_status_known",
        ),
    )


def downgrade() -> None:
    op.drop_table("accounts")
    op.drop_index("ix_api_keys_application_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("applications")
