"""The test PostgreSQL (LOCKGATE_TEST_POSTGRES_URL; CI starts one with .ci/postgres.sh)."""

from __future__ import annotations

import os

import pytest


def fresh_postgres_url() -> str:
    """Its URL with every lockgate table dropped first; skips the test without one, fails it
    when LOCKGATE_REQUIRE_POSTGRES=1 (CI)."""
    url = os.environ.get("LOCKGATE_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("LOCKGATE_REQUIRE_POSTGRES") == "1":
            pytest.fail("LOCKGATE_REQUIRE_POSTGRES=1 but LOCKGATE_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL: set LOCKGATE_TEST_POSTGRES_URL (CI starts one with .ci/postgres.sh)")
    import sqlalchemy as sa

    from lockgate.plugins.audit import _schema as audit_schema
    from lockgate.plugins.governance import _schema as governance_schema
    from lockgate.plugins.registry import _schema as registry_schema

    engine = sa.create_engine(url)
    for schema in (audit_schema, governance_schema, registry_schema):
        schema.metadata.drop_all(engine)
    engine.dispose()
    return url
