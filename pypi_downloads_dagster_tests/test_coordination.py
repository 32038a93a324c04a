"""Issue 7's findings at the level of runs on one instance: a chunk is fetched by one run at a time,
a package fetched today is not asked again by any chunk or plan, a new plan leaves the packages of
chunks that runs fetch (or will: a queued backfill) to them, and keeps their keys."""

import time

import dagster as dg
import pytest

from pypi_downloads_dagster.orchestration.leases import LeaseTable, chunk_lease
from pypi_downloads_dagster.orchestration.partitions import current_plan, recent_stats_chunks
from pypi_downloads_dagster.dataset.schema import normalize_name
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats
from pypi_downloads_dagster_tests.test_assets import PLAN, failure, instance, resources, run  # noqa: F401 - fixture

NAMES = [f"Pkg_{i}" for i in range(6)]
STATS = {normalize_name(name): (i, 7 * i, 30 * i) for i, name in enumerate(NAMES, start=1)}


def plan(res, instance, chunk_size=2):
    result = run(PLAN, res, instance, run_config={"ops": {"stale_packages": {"config": {"chunk_size": chunk_size}}}})
    (meta,) = [m.metadata for m in result.asset_materializations_for_node("stale_packages")]
    return {key: value.value for key, value in meta.items()}


def asked(stats) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in stats.log:
        name = entry.path.split("/")[3]
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_a_chunk_another_run_holds_is_not_fetched_again(tmp_path, instance):
    """Finding 1: `sync` and the sensor both ran every key of one plan, asking 39 of 40 packages twice."""
    with FakeIndex(NAMES) as index, FakePypistats(STATS, per_second=1000, per_minute=60000) as stats:
        res = resources(index, stats, tmp_path / "repo")
        keys = plan(res, instance)["chunk_keys"]
        table = LeaseTable.of_instance(instance)
        assert table.take(chunk_lease(keys[0]), "run elsewhere on host-b (pid 7)")
        busy = run(["recent_stats"], res, instance, partition_key=keys[0], raise_on_error=False)
        message = failure(busy)
        assert "ChunkBusy" in message and "run elsewhere on host-b (pid 7)" in message and "asked for nothing" in message
        assert stats.log == []
        table.release([chunk_lease(keys[0])], "run elsewhere on host-b (pid 7)")
        for key in keys:
            run(["recent_stats"], res, instance, partition_key=key)
        again = run(["recent_stats"], res, instance, partition_key=keys[0])  # a re-run the same day
        meta = again.asset_materializations_for_node("recent_stats")[0].metadata
        assert meta["requested"].value == 0 and meta["already_fetched_today"].value == 2
    assert asked(stats) == {name: 1 for name in STATS}
    assert LeaseTable.of_instance(instance).holders("") == {}  # every lease given back


def test_the_lease_of_a_run_that_ended_is_released_at_once(tmp_path, instance):
    """A killed run's lease would hold its chunk (and its egresses) until it expires; once the
    instance marks the run failed (run monitoring does), the next run takes them at once."""
    from pypi_downloads_dagster.orchestration.leases import EGRESS, holder_name
    from pypi_downloads_dagster.orchestration.partitions import leased_chunks, live_leases

    with FakeIndex(NAMES) as index, FakePypistats(STATS, per_second=1000, per_minute=60000) as stats:
        res = resources(index, stats, tmp_path / "repo")
        keys = plan(res, instance)["chunk_keys"]
        dead = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), run_id="00000000-0000-4000-8000-00000000dead")
        table = LeaseTable.of_instance(instance)
        assert table.take(chunk_lease(keys[0]), holder_name(dead.run_id))
        assert table.take(f"{EGRESS}direct", holder_name(dead.run_id))
        assert keys[0] in leased_chunks(instance)  # its run has not ended: it may be working
        instance.report_run_failed(dead)
        assert live_leases(instance, EGRESS) == {} and leased_chunks(instance) == {}
        assert table.take(chunk_lease(keys[0]), holder_name(dead.run_id))  # killed again, lease left
        result = run(["recent_stats"], res, instance, partition_key=keys[0])
        assert result.success and len(stats.log) == 2


def test_a_new_plan_leaves_a_running_chunks_packages_to_it(tmp_path, instance):
    """Finding 2: a plan made while an earlier plan's chunks run planned again what those runs were
    about to fetch (28 of 40 asked twice the same day)."""
    with FakeIndex(NAMES) as index, FakePypistats(STATS, per_second=1000, per_minute=60000) as stats:
        res = resources(index, stats, tmp_path / "repo")
        first = plan(res, instance)["chunk_keys"]
        table = LeaseTable.of_instance(instance)
        assert table.take(chunk_lease(first[0]), "run of the first plan")  # its run is under way
        time.sleep(1.1)  # plan ids are per second
        second = plan(res, instance)
        assert second["older_chunk_keys_kept"] == 1 and second["packages_held_by_older_chunks"] == 2
        # The kept chunk is part of the new plan's work (run again by the cycle if its run dies).
        assert second["packages"] == 4 and second["chunk_keys"][0] == first[0] and second["chunks"] == 2
        live = set(instance.get_dynamic_partitions(recent_stats_chunks.name))
        assert live == set(second["chunk_keys"])  # the other old keys went
        # The old chunk's run goes on under the new plan: it knows its packages.
        table.release([chunk_lease(first[0])], "run of the first plan")
        run(["recent_stats"], res, instance, partition_key=first[0])
        for key in second["chunk_keys"][1:]:
            run(["recent_stats"], res, instance, partition_key=key)
        # A key the new plan removed cannot be run (its packages are in the new plan).
        with pytest.raises(dg.DagsterUnknownPartitionError):
            run(["recent_stats"], res, instance, partition_key=first[1])
        assert current_plan(instance)[0] == second["plan_id"]
    assert asked(stats) == {name: 1 for name in STATS}


def test_a_new_plan_keeps_the_keys_of_a_backfill_still_launching(tmp_path, instance):
    """Finding 6: a new plan deleted the keys of backfill runs that were queued but not launched."""
    from dagster._core.execution.backfill import PartitionBackfill

    from pypi_downloads_dagster.definitions import defs

    with FakeIndex(NAMES) as index, FakePypistats(STATS, per_second=1000, per_minute=60000) as stats:
        res = resources(index, stats, tmp_path / "repo")
        first = plan(res, instance)["chunk_keys"]
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id="bf1", asset_graph=defs.resolve_asset_graph(), partition_names=first[:2],
            asset_selection=[dg.AssetKey("recent_stats")], backfill_timestamp=time.time(), tags={},
            dynamic_partitions_store=instance, all_partitions=False, title=None, description=None, run_config=None,
        )
        instance.add_backfill(backfill)
        time.sleep(1.1)
        second = plan(res, instance)
        assert second["older_chunk_keys_kept"] == 2 and second["packages_held_by_older_chunks"] == 4
        assert second["packages"] == 2 and second["chunk_keys"][:2] == sorted(first[:2])
        assert set(first[:2]) <= set(instance.get_dynamic_partitions(recent_stats_chunks.name))
        assert first[2] not in instance.get_dynamic_partitions(recent_stats_chunks.name)
    assert stats.log == []
