"""The daily cycle: the pure decisions, then schedule and sensor stepped through run by run against
a real Dagster instance and the local fakes."""

import pandas as pd
import pytest
import dagster as dg

from pypi_downloads_dagster.orchestration.cycle import CHECKPOINT, FINAL, PLAN_TAG, PUBLISH_TAG, ChunkState, PublishState, next_actions
from pypi_downloads_dagster.definitions import build_definitions
from pypi_downloads_dagster.services.http import RetryPolicy
from pypi_downloads_dagster.orchestration.resources import _RetrySettings
from pypi_downloads_dagster.dataset.store import FetchStore
from pypi_downloads_dagster.orchestration.partitions import recent_stats_chunks
from pypi_downloads_dagster.dataset.schema import DATASET_FILE, read_dataset_file
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

DECIDE = dict(now=1000.0, plan_started=0.0, deploy_span=300, max_chunk_attempts=3, max_in_flight=2, max_publish_attempts=3)


def chunk(key, done=False, running=False, failures=0):
    return ChunkState(key, done, running, failures)


def test_launches_at_most_max_in_flight_and_retries_failures_up_to_the_limit():
    chunks = [chunk("a", running=True), chunk("b", failures=1), chunk("c"), chunk("d", failures=3), chunk("e", done=True)]
    actions = next_actions(chunks, PublishState(), **DECIDE)
    assert [(c.key, c.attempt) for c in actions.chunks] == [("b", 2)]
    assert actions.given_up == ["d"]


def test_checkpoints_at_most_every_deploy_span_while_chunks_remain():
    chunks = [chunk("a", done=True), chunk("b", running=True)]
    assert next_actions(chunks, PublishState(), **DECIDE).publish == CHECKPOINT
    early = dict(DECIDE, now=200.0)
    assert next_actions(chunks, PublishState(), **early).publish is None, "not before deploy_span after the plan"
    recent = PublishState(last_started=900.0, chunks_done_at_last=0)
    assert next_actions(chunks, recent, **DECIDE).publish is None, "not within deploy_span of the last publish"
    nothing_new = PublishState(last_started=100.0, chunks_done_at_last=1)
    assert next_actions(chunks, nothing_new, **DECIDE).publish is None, "nothing new since the last publish"
    assert next_actions(chunks, PublishState(in_progress=True), **DECIDE).publish is None


def test_final_publish_once_every_chunk_is_done_or_given_up():
    chunks = [chunk("a", done=True), chunk("b", failures=3)]
    assert next_actions(chunks, PublishState(), **DECIDE).publish == FINAL
    assert next_actions(chunks, PublishState(final_succeeded=True), **DECIDE).publish is None
    assert next_actions(chunks, PublishState(final_failures=1), **DECIDE).publish == FINAL
    assert next_actions(chunks, PublishState(final_failures=3), **DECIDE).publish is None
    assert next_actions([], PublishState(), **DECIDE).publish == FINAL, "an empty plan still publishes index changes"


# -- the schedule and the sensor against a real instance -------------------------------------------

PROJECTS = [f"Pkg-{i}" for i in range(7)]
COUNTS = {f"pkg-{i}": (i, 7 * i, 30 * i) for i in range(7)}


@pytest.fixture
def world(tmp_path, monkeypatch):
    # Retries as the resources build them, with waits scaled down (a failing package costs ms, not 16 s).
    monkeypatch.setattr(_RetrySettings, "retry_policy", lambda self: RetryPolicy(3, 0.01, 0.02, 5, 0.1, down_after=60))
    with FakeIndex(PROJECTS) as index, FakePypistats(COUNTS, per_second=1000, per_minute=60000) as stats, dg.instance_for_test() as instance:
        env = {
            "PYPI_INDEX_URL": index.index_url,
            "PYPISTATS_API_URL": stats.api_url,
            "PYPISTATS_MAX_PER_SECOND": "1000",
            "PYPISTATS_MAX_PER_MINUTE": "60000",
            "PYPI_DOWNLOADS_DIR": str(tmp_path / "repo"),
            "PYPI_DOWNLOADS_DEPLOY_SPAN": "3600",
        }
        yield build_definitions(env), instance, stats, tmp_path / "repo"


def tick(defs, instance):
    sensor = defs.resolve_sensor_def("daily_cycle")
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        result = sensor(context)
    return result.run_requests if isinstance(result, dg.SensorResult) else []


def execute(defs, instance, request):
    job = defs.resolve_job_def(request.job_name)
    return job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags, raise_on_error=False)


def plan(defs, instance, chunk_size=2):
    schedule = defs.resolve_schedule_def("daily_refresh")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    (request,) = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
    job = defs.resolve_job_def("plan_refresh")
    result = job.execute_in_process(
        instance=instance, run_config={"ops": {"stale_packages": {"config": {"chunk_size": chunk_size}}}}, tags=request.tags
    )
    return result.output_for_node("stale_packages")


def test_schedule_plan_then_sensor_runs_the_cycle_to_one_final_publish(world):
    defs, instance, stats, folder = world
    assert dg.Definitions.validate_loadable(defs) is None
    planned = plan(defs, instance)
    keys = list(dict.fromkeys(planned["chunk"]))
    assert len(keys) == 4

    launched = []
    for _ in range(10):
        requests = tick(defs, instance)
        chunk_requests = [r for r in requests if r.job_name == "fetch_chunk"]
        assert len(chunk_requests) <= 2, "at most two chunk runs per egress in flight"
        publish = [r for r in requests if r.job_name == "publish_dataset"]
        if publish:
            assert not chunk_requests and publish[0].tags[PUBLISH_TAG] == FINAL
            assert execute(defs, instance, publish[0]).success
            break
        for request in chunk_requests:
            assert request.tags[PLAN_TAG] == request.partition_key.rsplit("-", 1)[0]
            assert execute(defs, instance, request).success
            launched.append(request.partition_key)
    assert sorted(launched) == sorted(keys), "every chunk once"
    assert tick(defs, instance) == [], "after the final publish there is nothing to do"

    dataset = read_dataset_file((folder / DATASET_FILE).read_bytes(), DATASET_FILE).set_index("name")
    assert dataset.loc["Pkg-3", "last_month"] == 90 and (dataset["status"] == "valid").sum() == 7
    assert sorted(e.path.split("/")[3] for e in stats.log) == sorted(COUNTS), "each package requested once"


def test_a_failing_chunk_is_retried_then_given_up_and_the_rest_is_published(world):
    defs, instance, stats, folder = world
    for name in ("pkg-0", "pkg-1"):  # the whole first chunk fails every time (a 200 that is not JSON)
        stats.garbage(name, times=1000)
    planned = plan(defs, instance)
    bad_key = planned.set_index("normalized").loc["pkg-0", "chunk"]
    attempts = {}
    for _ in range(20):
        requests = tick(defs, instance)
        if any(r.job_name == "publish_dataset" for r in requests):
            break
        for request in requests:
            attempts[request.partition_key] = attempts.get(request.partition_key, 0) + 1
            execute(defs, instance, request)
    assert attempts[bad_key] == 3 and all(n == 1 for key, n in attempts.items() if key != bad_key)
    final = [r for r in requests if r.job_name == "publish_dataset"][0]
    assert execute(defs, instance, final).success
    dataset = read_dataset_file((folder / DATASET_FILE).read_bytes(), DATASET_FILE).set_index("name")
    assert pd.isna(dataset.loc["Pkg-0", "status"]) and dataset.loc["Pkg-6", "last_month"] == 180


def test_checkpoint_publishes_what_is_fetched_while_chunks_remain(world, tmp_path):
    defs, instance, stats, folder = world
    defs = build_definitions({**_env_of(defs), "PYPI_DOWNLOADS_DEPLOY_SPAN": "0.001"})
    planned = plan(defs, instance)
    first = tick(defs, instance)[0]
    assert execute(defs, instance, first).success
    requests = tick(defs, instance)
    checkpoint = [r for r in requests if r.job_name == "publish_dataset"]
    assert checkpoint and checkpoint[0].tags[PUBLISH_TAG] == CHECKPOINT
    assert execute(defs, instance, checkpoint[0]).success
    dataset = read_dataset_file((folder / DATASET_FILE).read_bytes(), DATASET_FILE)
    fetched = set(planned.loc[planned["chunk"] == first.partition_key, "name"])
    assert set(dataset.loc[dataset["status"].notna(), "name"]) == fetched


def _env_of(defs):
    pypistats = defs.resources["pypistats"]
    return {
        "PYPI_INDEX_URL": defs.resources["index_source"].url,
        "PYPISTATS_API_URL": pypistats.url,
        "PYPISTATS_MAX_PER_SECOND": "1000",
        "PYPISTATS_MAX_PER_MINUTE": "60000",
        "PYPI_DOWNLOADS_DIR": defs.resources["dataset_repo"].local_dir,
    }


def test_a_new_plan_rotates_keys_and_loses_no_fetched_row(world):
    defs, instance, stats, folder = world
    first_plan = plan(defs, instance)
    first_keys = set(first_plan["chunk"])
    # One chunk fetched, then the cycle is interrupted before any publish.
    request = tick(defs, instance)[0]
    assert execute(defs, instance, request).success
    fetched_names = set(first_plan.loc[first_plan["chunk"] == request.partition_key, "normalized"])

    import time

    time.sleep(1.1)  # plan ids have one-second resolution
    second_plan = plan(defs, instance)
    live = set(instance.get_dynamic_partitions(recent_stats_chunks.name))
    assert live == set(second_plan["chunk"]) and not (live & first_keys), "old keys rotated out"
    assert not (set(second_plan["normalized"]) & fetched_names), "fetched but unpublished rows are not planned again"

    for _ in range(10):
        requests = tick(defs, instance)
        for r in requests:
            assert execute(defs, instance, r).success
        if any(r.job_name == "publish_dataset" for r in requests):
            break
    dataset = read_dataset_file((folder / DATASET_FILE).read_bytes(), DATASET_FILE)
    assert (dataset["status"] == "valid").sum() == 7
    requested = [e.path.split("/")[3] for e in stats.log]
    assert len(requested) == len(set(requested)) == 7, "no package requested twice"
    assert FetchStore.in_storage(instance.storage_directory()).keys()
