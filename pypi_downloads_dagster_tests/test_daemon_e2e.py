"""The daily cycle under the real daemon: `dagster dev` (webserver + daemon) with the shipped
deploy/dagster.yaml in a temporary DAGSTER_HOME, against the local services. One plan is launched through
GraphQL and the daemon alone runs the chunks, checkpoints and the final publish. Then a chunk run is
killed mid-flight, the next plan starts, and every fetched row is still published, none asked twice."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import dagster as dg

from pypi_downloads_dagster.orchestration.cycle import FINAL, PLAN_TAG, PUBLISH_TAG
from pypi_downloads_dagster.dataset.schema import normalize_name, read_dataset_file
from pypi_downloads_dagster.orchestration.partitions import current_plan
from pypi_downloads_dagster_tests.fakes.env import service_env
from pypi_downloads_dagster_tests.fakes.hub import FakeHub
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
REPO = "tester/pypi-downloads"
TOKEN = "hf_daemon_secret"
FIRST = [f"Proj_{i:02d}" for i in range(16)]
LATER = [f"late.{i:02d}" for i in range(8)]
STATS = {normalize_name(n): (i, 7 * i, 30 * i) for i, n in enumerate(FIRST + LATER, start=1)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def cycle(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The shipped instance config, with run monitoring polling faster so the test need not wait.
    config = (ROOT / "deploy" / "dagster.yaml").read_text().replace("poll_interval_seconds: 20", "poll_interval_seconds: 3")
    (home / "dagster.yaml").write_text(config)
    hub = FakeHub(token=TOKEN)
    with FakeIndex(FIRST) as index, FakePypistats(
        STATS, per_second=5, per_minute=30, second_window=0.2, minute_window=3.0
    ) as stats, hub.serve() as hub_server:
        env = service_env(
            index=index, stats=stats, hub_url=hub_server.url, repo=REPO, token=TOKEN, dagster_home=home,
            max_per_second=20, max_per_minute=500, PYPI_DOWNLOADS_SENSOR_INTERVAL=2, PYPI_DOWNLOADS_DEPLOY_SPAN=6,
        )
        with dagster_dev(env, tmp_path / "dagster_dev.log") as port:
            yield {"port": port, "home": home, "index": index, "stats": stats, "hub": hub, "log": tmp_path / "dagster_dev.log"}


@contextlib.contextmanager
def dagster_dev(env: dict, log_path: Path):
    """`dagster dev` (webserver and daemon) with `env`, its output in `log_path`; yields its port
    once it serves, and stops the whole process group after."""
    port = free_port()
    log = open(log_path, "w")
    dev = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: _up(port), 180, "dagster dev to serve")
        yield port
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        log.close()


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok
    except requests.RequestException:
        return False


def launch_plan(port: int, chunk_size: int) -> str:
    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    return client.submit_job_execution(
        "plan_refresh", run_config={"ops": {"stale_packages": {"config": {"chunk_size": chunk_size}}}}
    )


def final_published(home: Path, plan_id: str) -> bool:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name="publish_dataset",
                tags={PLAN_TAG: plan_id, PUBLISH_TAG: FINAL},
                statuses=[dg.DagsterRunStatus.SUCCESS],
            )
        )
    return bool(records)


def plan_after(home: Path, run_id: str):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
            assert run is None or run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED), "plan run failed"
            return None
        return current_plan(instance)


def run_status(home: Path, run_id: str):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return instance.get_run_by_id(run_id).status


def answered(stats) -> dict[str, int]:
    """Answers (200 or 404) per package: what was actually fetched."""
    counts: dict[str, int] = {}
    for entry in stats.log:
        if entry.status in (200, 404):
            name = entry.path.split("/")[3]
            counts[name] = counts.get(name, 0) + 1
    return counts


def chunk_worker_pid(home: Path, partition_key: str):
    """(pid, run id) of the process running the chunk `partition_key`, once its step has started.
    Runs are children of the code server, so the pid comes from the run's own events."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name="fetch_chunk", tags={"dagster/partition": partition_key}, statuses=[dg.DagsterRunStatus.STARTED])
        )
        if not records:
            return None
        run_id = records[0].dagster_run.run_id
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is not None and event.event_type_value == "STEP_START" and event.pid:
                return event.pid, run_id
    return None


def test_the_daemon_runs_the_cycle_and_an_interrupted_cycle_loses_nothing(cycle):
    port, home, index, stats, hub = cycle["port"], cycle["home"], cycle["index"], cycle["stats"], cycle["hub"]

    # One launch of the plan; the daemon does the rest: 16 packages in 4 chunks, then publishes.
    plan_run = launch_plan(port, chunk_size=4)
    plan_id, keys, _ = wait_for(lambda: plan_after(home, plan_run), 120, "the first plan")
    assert len(keys) == 4
    wait_for(lambda: final_published(home, plan_id), 300, "the first cycle's final publish", interval=2)
    summaries = [commit.summary for commit in hub.commits(REPO)]
    assert sum(s.startswith(f"Final publish of plan {plan_id}") for s in summaries) == 1
    assert any(s.startswith(f"Checkpoint publish of plan {plan_id}") for s in summaries), summaries
    data = read_dataset_file(hub.files(REPO)["dataset.parquet"], "dataset.parquet").set_index("name")
    assert sorted(data.index) == sorted(FIRST) and (data["status"] == "valid").all()

    # Next: new projects; one answer of the first chunk keeps failing so that chunk is still running
    # (backing off) when its process is killed. Then the next day's plan arrives.
    index.projects = FIRST + LATER
    stats.drop("late-03", times=4)
    plan_run = launch_plan(port, chunk_size=4)
    second_id, second_keys, _ = wait_for(lambda: plan_after(home, plan_run), 120, "the second plan")
    assert len(second_keys) == 2
    victim = second_keys[0]
    wait_for(lambda: any(e.path.endswith("/late-03/recent") for e in stats.log), 120, "the chunk to reach late-03")
    pid, killed_run = wait_for(lambda: chunk_worker_pid(home, victim), 30, "the chunk run's process")
    fetched_before_kill = {name for name in answered(stats) if name.startswith("late-")}
    os.kill(pid, signal.SIGKILL)
    assert fetched_before_kill, "some answers were in before the kill"

    time.sleep(1.1)  # plan ids have one-second resolution
    plan_run = launch_plan(port, chunk_size=4)
    third_id, third_keys, _ = wait_for(lambda: plan_after(home, plan_run), 120, "the third plan")
    # If the instance has not yet marked the killed run failed, the plan keeps its chunk (and its
    # packages) as part of its own work and the sensor runs it again once it has; otherwise the
    # chunk's key goes and its unfetched packages are planned anew. Either way, nothing is lost:
    assert victim in third_keys or third_keys
    wait_for(lambda: final_published(home, third_id), 300, "the third cycle's final publish", interval=2)

    # Every project published with its counts; every package answered exactly once over all cycles.
    data = read_dataset_file(hub.files(REPO)["dataset.parquet"], "dataset.parquet").set_index("name")
    assert sorted(data.index) == sorted(FIRST + LATER)
    for name in FIRST + LATER:
        assert [data.loc[name, c] for c in ("last_day", "last_week", "last_month")] == list(STATS[normalize_name(name)]), name
    # Each chunk run first asks for the canary (the published project with the most downloads);
    # every other package is answered exactly once.
    canary = max(FIRST, key=lambda name: STATS[normalize_name(name)][2])
    assert {n: c for n, c in answered(stats).items() if n != normalize_name(canary)} == {
        name: 1 for name in STATS if name != normalize_name(canary)
    }
    # The killed run is marked failed (its pool slot freed), not left hanging as started.
    wait_for(lambda: run_status(home, killed_run) == dg.DagsterRunStatus.FAILURE, 60, "the killed run to be marked failed")
    log = Path(cycle["log"]).read_text()
    assert TOKEN not in log
