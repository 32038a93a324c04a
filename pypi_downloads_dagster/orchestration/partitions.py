"""Partitions: `recent_stats` is split into chunks of the stale plan, added by `stale_packages`."""

from typing import Optional

import dagster as dg

from dagster._core.storage.dagster_run import FINISHED_STATUSES

from pypi_downloads_dagster.orchestration.leases import CHUNK, LeaseTable, run_of

#: One key per UTC day: `download_history` (ClickPy holds PyPI's downloads from 2016; the partitions
#: start where a backfill is likely to, and a person can backfill any range of them).
HISTORY_START = "2024-01-01"
download_days = dg.DailyPartitionsDefinition(start_date=HISTORY_START, timezone="UTC")

#: One key per chunk, `<plan id>-<chunk number>`, e.g. `20261124T020000-00003`.
recent_stats_chunks = dg.DynamicPartitionsDefinition(name="recent_stats_chunks")

#: The Dagster pool every `recent_stats` run takes a slot of. Two runs at a time: one fetching
#: through every egress it leases, one started and ready to take them over the moment it ends
#: (more would only wait for egresses; see `leases.EgressLeases`).
PYPISTATS_POOL = "pypistats"
FETCHING_RUNS = 2

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


def live_leases(instance: dg.DagsterInstance, prefix: str) -> dict[str, str]:
    """{lease name: holder} of the leases under `prefix`, after releasing those whose run the
    instance knows has ended (killed and marked failed by run monitoring, say): they need not wait
    for their lease to expire."""
    table = LeaseTable.of_instance(instance)
    leases = table.holders(prefix)
    runs = {name: run_of(holder) for name, holder in leases.items()}
    ids = sorted({run_id for run_id in runs.values() if run_id})
    ended = {
        record.dagster_run.run_id
        for record in instance.get_run_records(filters=dg.RunsFilter(run_ids=ids, statuses=list(FINISHED_STATUSES)))
    } if ids else set()
    for name, run_id in runs.items():
        if run_id in ended:
            table.release([name], leases.pop(name))
    return leases


def leased_chunks(instance: dg.DagsterInstance) -> dict[str, str]:
    """{chunk key: holder} of every chunk a run is fetching now (its lease, see `leases.py`)."""
    return {name[len(CHUNK):]: holder for name, holder in live_leases(instance, CHUNK).items()}


def backfill_partitions(instance: dg.DagsterInstance) -> set[str]:
    """Chunk keys of backfills still launching runs (a backfill creates its runs over time)."""
    from dagster._core.execution.backfill import BulkActionStatus

    keys: set[str] = set()
    for backfill in instance.get_backfills(status=BulkActionStatus.REQUESTED):
        keys.update(backfill.partition_names or ())  # a job backfill (`dagster job backfill`)
        data = getattr(backfill, "asset_backfill_data", None)  # an asset backfill (the UI)
        subset = data.target_subset.partitions_subsets_by_asset_key.get(dg.AssetKey("recent_stats")) if data else None
        if subset is not None:
            keys.update(subset.get_partition_keys())
    return keys


def busy_chunks(instance: dg.DagsterInstance) -> set[str]:
    """Chunk keys something will fetch or is fetching: a run queued or running, a lease, a backfill."""
    return partitions_in_progress(instance) | set(leased_chunks(instance)) | backfill_partitions(instance)


def retire_chunk_keys(instance: dg.DagsterInstance) -> tuple[list[str], set[str]]:
    """Before a new plan: delete every chunk key nothing will fetch; returns (deleted, kept).

    The kept keys' packages are held: the new plan leaves them to those runs. Deleting a key never
    loses data: fetched rows live in the fetch store, not in partitions; the packages of a chunk
    never fetched are still stale and go into the new plan. Busy keys are read again after the
    deletion: a run that took its chunk's lease in between is kept (and a run that takes it after
    finds its key gone and asks for nothing, see `recent_stats`).
    """
    busy = busy_chunks(instance)
    deleted = [key for key in instance.get_dynamic_partitions(recent_stats_chunks.name) if key not in busy]
    for key in deleted:
        instance.delete_dynamic_partition(recent_stats_chunks.name, key)
    kept = set(instance.get_dynamic_partitions(recent_stats_chunks.name)) | busy_chunks(instance)
    return deleted, kept


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
