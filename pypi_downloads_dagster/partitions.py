"""Partitions: `recent_stats` is split into chunks of the stale plan, added by `stale_packages`."""

from typing import Optional

import dagster as dg

#: One key per chunk, `<plan id>-<chunk number>`, e.g. `20261124T020000-00003`.
recent_stats_chunks = dg.DynamicPartitionsDefinition(name="recent_stats_chunks")

#: The Dagster pool every `recent_stats` run takes a slot of; sized to the number of egresses.
PYPISTATS_POOL = "pypistats"

ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def partitions_in_progress(instance: dg.DagsterInstance) -> set[str]:
    """Partition keys of every run queued or running now, whatever launched it."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES))
    return {key for record in records if (key := record.dagster_run.tags.get("dagster/partition"))}


def rotate_chunk_keys(instance: dg.DagsterInstance, current: list[str]) -> list[str]:
    """Make `current` the live chunk keys: add them, and delete every older key no run is using.

    Deleting a key never loses data: fetched rows live in the fetch store, not in partitions; the
    packages of a chunk that was never fetched are still stale and are in the new plan.
    """
    instance.add_dynamic_partitions(recent_stats_chunks.name, current)
    busy = partitions_in_progress(instance)
    keep = set(current) | busy
    removed = [key for key in instance.get_dynamic_partitions(recent_stats_chunks.name) if key not in keep]
    for key in removed:
        instance.delete_dynamic_partition(recent_stats_chunks.name, key)
    return removed


def latest_metadata(instance: dg.DagsterInstance, asset: str) -> tuple[dict, Optional[float]]:
    """The metadata of `asset`'s latest materialization and its time ({} and None: never materialized)."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}, None
    return dict(event.asset_materialization.metadata), event.timestamp


def current_plan(instance: dg.DagsterInstance) -> Optional[tuple[str, list[str], float]]:
    """(plan id, chunk keys, when it was made) of the latest `stale_packages` materialization."""
    metadata, timestamp = latest_metadata(instance, "stale_packages")
    if "plan_id" not in metadata:
        return None
    return metadata["plan_id"].value, list(metadata["chunk_keys"].value), timestamp
