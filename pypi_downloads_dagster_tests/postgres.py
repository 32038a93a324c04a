"""A real PostgreSQL server for tests: its own cluster in a temp folder (`initdb`, `pg_ctl`) on a
free port, with a password, so tests run Dagster's Postgres storage as a deployment would.
PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres` user."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

USER = "dagster"
PASSWORD = "pg-s3cret-pw"
DB = "pypi_downloads"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is not installed: apt-get install postgresql (.ci/run does)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres_server():
    """Yield the DAGSTER_POSTGRES_* variables of a running server with database DB."""
    as_root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="pypi-downloads-pg-"))
    data, pwfile = folder / "data", folder / "pw"
    pwfile.write_text(PASSWORD)
    prefix: list[str] = []
    if as_root:
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        os.chown(pwfile, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, capture_output=True, text=True, timeout=120)

    try:
        run(_binary("initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        run(
            _binary("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60", "start",
            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        )
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", "postgres", "-c", f"CREATE DATABASE {DB}"],
            check=True, capture_output=True, text=True, env=env, timeout=60,
        )
        yield {
            "DAGSTER_POSTGRES_USER": USER,
            "DAGSTER_POSTGRES_PASSWORD": PASSWORD,
            "DAGSTER_POSTGRES_HOSTNAME": "127.0.0.1",
            "DAGSTER_POSTGRES_DB": DB,
            "DAGSTER_POSTGRES_PORT": str(port),
        }
    finally:
        with contextlib.suppress(Exception):
            run(_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def create_database(env: dict) -> str:
    """A new, empty database on the server of `env` (DAGSTER_POSTGRES_*): one per test, so no
    test sees another's runs or leases. Returns its name."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        f"postgresql+psycopg2://{env['DAGSTER_POSTGRES_USER']}:{env['DAGSTER_POSTGRES_PASSWORD']}@"
        f"{env['DAGSTER_POSTGRES_HOSTNAME']}:{env['DAGSTER_POSTGRES_PORT']}/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return name
