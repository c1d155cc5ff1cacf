"""The tests run on the server they claim to: a supported major, the one asked for if any.

``.ci/pg_matrix.sh`` sets ``MVO_TEST_PG_MAJOR`` with ``PG_BINDIR`` for each major it tests, so
a matrix entry whose binaries are not the expected version fails here instead of passing on
the wrong server.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

from mv_orchestration_tests.conftest import server_major

SUPPORTED = range(14, 19)


def test_server_is_a_supported_major_and_the_one_asked_for(conn: psycopg.Connection[Any]) -> None:
    major = server_major(conn)
    assert major in SUPPORTED, f"PostgreSQL {major} is outside the supported 14-18"
    expected = os.environ.get("MVO_TEST_PG_MAJOR")
    if expected:
        assert major == int(expected), f"MVO_TEST_PG_MAJOR={expected} but the server is {major}"
