"""More than one process on one PostgreSQL instance, as deploy/dagster-postgres.yaml sets it up: the
daemon (`dagster dev`) runs a cycle and `sync` is started beside it on the same instance. Every
package is asked of pypistats exactly once, and the last plan is published whole."""

import os
import subprocess

import pytest

from pypi_downloads_dagster.orchestration.partitions import current_plan
from pypi_downloads_dagster.dataset.schema import normalize_name, read_dataset_file
from pypi_downloads_dagster_tests.conftest import write_instance
from pypi_downloads_dagster_tests.fakes.env import service_env
from pypi_downloads_dagster_tests.fakes.hub import FakeHub
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats
from pypi_downloads_dagster_tests.test_cli import CLI
from pypi_downloads_dagster_tests.postgres import create_database
from pypi_downloads_dagster_tests.test_daemon_e2e import answered, dagster_dev, final_published, launch_plan, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = "tester/pypi-downloads"
TOKEN = "hf_pg_secret"
NAMES = [f"Proj_{i:02d}" for i in range(24)]
STATS = {normalize_name(n): (i, 7 * i, 30 * i) for i, n in enumerate(NAMES, start=1)}


def latest_plan(env: dict):
    import dagster as dg

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            return current_plan(instance)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_daemon_and_sync_on_one_postgres_instance_ask_every_package_once(tmp_path, postgres_env):
    home = tmp_path / "dagster_home"
    write_instance(home, "postgres")
    hub = FakeHub(token=TOKEN)
    with FakeIndex(NAMES) as index, FakePypistats(
        STATS, per_second=5, per_minute=30, second_window=0.2, minute_window=3.0
    ) as stats, hub.serve() as hub_server:
        env = service_env(
            index=index, stats=stats, hub_url=hub_server.url, repo=REPO, token=TOKEN, dagster_home=home,
            max_per_second=20, max_per_minute=500, PYPI_DOWNLOADS_SENSOR_INTERVAL=2, PYPI_DOWNLOADS_DEPLOY_SPAN=6,
            **{**postgres_env, "DAGSTER_POSTGRES_DB": create_database(postgres_env)},
            PYPI_DOWNLOADS_SHARED_DIR=tmp_path / "shared",
        )
        # The instance's tables exist before its processes start (as after `dagster instance migrate`).
        latest_plan(env)
        with dagster_dev(env, tmp_path / "dagster_dev.log") as port:
            launch_plan(port, chunk_size=4)
            wait_for(lambda: latest_plan(env), 120, "the daemon's plan")
            sync = subprocess.run([*CLI, "sync", "--chunk-size", "4"], env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
            assert sync.returncode in (0, 1), sync.stdout + sync.stderr
            assert "summary:" in sync.stdout, sync.stdout + sync.stderr
            plan_id = latest_plan(env)[0]
            saved = os.environ.copy()
            os.environ.update(env)
            try:
                wait_for(lambda: final_published(home, plan_id), 300, "the final publish of the last plan", interval=2)
            finally:
                os.environ.clear()
                os.environ.update(saved)

    print(sync.stdout)
    data = read_dataset_file(hub.files(REPO)["dataset.parquet"], "dataset.parquet").set_index("name")
    assert sorted(data.index) == sorted(NAMES)
    assert data["status"].eq("valid").all(), data[data["status"].ne("valid")]
    for name in NAMES:
        assert [data.loc[name, c] for c in ("last_day", "last_week", "last_month")] == list(STATS[normalize_name(name)]), name
    # Chunk runs after the first publish ask for the canary first (the published project with the
    # most downloads); every other package is answered exactly once, whoever's run asked.
    canary = normalize_name(max(NAMES, key=lambda name: STATS[normalize_name(name)][2]))
    assert {n: c for n, c in answered(stats).items() if n != canary} == {name: 1 for name in STATS if name != canary}
    assert [e.status for e in stats.log].count(429) == 0
    text = (tmp_path / "dagster_dev.log").read_text() + sync.stdout + sync.stderr
    assert postgres_env["DAGSTER_POSTGRES_PASSWORD"] not in text and TOKEN not in text
