"""Test-wide setup: huggingface_hub must talk to the local fake Hub only (see REFERENCE.md section 4)."""

import os
import tempfile

# Set before anything imports huggingface_hub: it reads these at import time.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="pypi-downloads-hf-home-"))
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_REPO_ID", None)
os.environ.pop("PP_URL", None)


import pytest  # noqa: E402 - after the environment above


@pytest.fixture
def no_backoff(monkeypatch):
    """huggingface_hub retries a failed HEAD after 1, 2, 4, 8, 8 s: keep the retries, skip the waits."""
    from types import SimpleNamespace

    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda seconds: None))


@pytest.fixture(scope="session")
def postgres_env():
    """DAGSTER_POSTGRES_* of a real PostgreSQL server started for this test session."""
    from pypi_downloads_dagster_tests.postgres import postgres_server

    with postgres_server() as env:
        yield env


def write_instance(home, kind: str) -> None:
    """DAGSTER_HOME `home` with the shipped instance config of `kind` ('sqlite' or 'postgres')."""
    from pathlib import Path

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    source = deploy / ("dagster.yaml" if kind == "sqlite" else "dagster-postgres.yaml")
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(source.read_text().replace("poll_interval_seconds: 20", "poll_interval_seconds: 3"))


@pytest.fixture(params=["sqlite", "postgres"])
def instance_env(request, tmp_path, monkeypatch):
    """(DAGSTER_HOME, environment) of a fresh instance on SQLite or on a fresh PostgreSQL database;
    the environment is also set in this process."""
    import os

    home = tmp_path / "dagster_home"
    write_instance(home, request.param)
    env = {"DAGSTER_HOME": str(home)}
    if request.param == "postgres":
        from pypi_downloads_dagster_tests.postgres import create_database

        pg = request.getfixturevalue("postgres_env")
        env.update({**pg, "DAGSTER_POSTGRES_DB": create_database(pg), "PYPI_DOWNLOADS_SHARED_DIR": str(tmp_path / "shared")})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return home, {**os.environ, **env}


@pytest.fixture(scope="session")
def clickhouse_engine():
    """The one ClickHouse engine (chDB) of the test session, with ClickPy's table: chDB runs one
    engine per process, so every test that needs one shares it and loads its own rows."""
    from pypi_downloads_dagster_tests.fakes.clickhouse import ChdbEngine, create_downloads_table

    with ChdbEngine() as engine:
        create_downloads_table(engine)
        yield engine


@pytest.fixture
def load_clickhouse(clickhouse_engine):
    """`load(rows)`: ClickPy's table holding exactly `rows` (DOWNLOADS_SCHEMA columns)."""
    from pypi_downloads_dagster.services.clickhouse import DEFAULT_TABLE
    from pypi_downloads_dagster_tests.fakes.clickhouse import load_downloads

    def load(rows):
        clickhouse_engine.query(f"TRUNCATE TABLE {DEFAULT_TABLE}")
        load_downloads(clickhouse_engine, rows)

    return load


@pytest.fixture(autouse=True)
def no_leaked_dagster_instance():
    """Each test starts with no "current" instance state: Dagster keeps the definitions-state
    storage of the last instance entered in a context variable, and a test that left one behind
    made the next test's definitions fail to load ("undefined DagsterInstance weakref")."""
    from dagster._core.storage.defs_state.base import _current_storage

    token = _current_storage.set(None)
    yield
    _current_storage.reset(token)
