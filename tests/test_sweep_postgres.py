"""The label-free sweep on a real PostgreSQL server, the database a team shares between
machines: two worker processes, every trial done once and picked label-free, a killed
worker's trial resumed — the checks of tests/test_sweep.py, on ``postgresql://``.

Needs a server: ``bash .ci/with_postgres.sh CMD`` starts a throw-away one and exports
DOMAINGAP_POSTGRES_URL (``.ci/run`` wraps the test command in it). Each test gets a
database of its own on that server, dropped afterwards."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.test_sweep import check_a_killed_worker_s_trial_is_resumed, check_two_workers_share_one_study

pytest.importorskip("optuna")
URL = os.environ.get("DOMAINGAP_POSTGRES_URL")
pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_url():
    """A fresh, empty database on the server: ``postgresql://.../<name>``."""
    if not URL:
        why = "no PostgreSQL server: DOMAINGAP_POSTGRES_URL is unset (run under bash .ci/with_postgres.sh)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    psycopg = pytest.importorskip("psycopg", reason="the postgres driver: pip install 'domaingap[postgres]'")
    from sqlalchemy.engine import make_url

    server = make_url(URL)
    name = f"sweep_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_workers_on_postgres_share_one_study_and_the_pick_is_label_free(tmp_path, postgres_url):
    assert postgres_url.startswith("postgresql://")  # the bare scheme a user writes
    check_two_workers_share_one_study(tmp_path, storage=postgres_url)


def test_a_killed_worker_s_trial_is_resumed_on_postgres(tmp_path, postgres_url):
    check_a_killed_worker_s_trial_is_resumed(tmp_path, storage=postgres_url)
