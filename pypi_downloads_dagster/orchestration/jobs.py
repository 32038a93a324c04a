"""Jobs and the schedule. A run without a partition key cannot include the partitioned
`recent_stats`, so a cycle is several runs: plan, one run per chunk, publish."""

import dagster as dg

from pypi_downloads_dagster.orchestration.partitions import download_days, recent_stats_chunks

plan_job = dg.define_asset_job(
    "plan_refresh",
    selection=["pypi_index", "existing_dataset", "stale_packages"],
    description="Read the index and the published dataset, plan the stale packages and add their chunks as partitions.",
)

fetch_chunk_job = dg.define_asset_job(
    "fetch_chunk",
    selection=["recent_stats"],
    partitions_def=recent_stats_chunks,
    description="Fetch pypistats counts for one chunk of the plan (run with a partition key).",
)

publish_job = dg.define_asset_job(
    "publish_dataset",
    # Not existing_dataset: the publish reads the repo head itself, so it commits on exactly what it merged.
    selection=["merged_dataset", "charts", "hf_dataset_card"],
    description="Merge every fetched chunk into the published dataset and publish dataset, card and charts in one commit.",
)

bulk_job = dg.define_asset_job(
    "bulk_refresh",
    selection=["pypi_index", "bulk_counts", "merged_dataset", "charts", "hf_dataset_card"],
    description="COUNTS_SOURCE=clickhouse: count every project on the index from ClickHouse in one query, "
    "cross-check a sample with pypistats, and publish dataset, card and charts in one commit.",
)

history_job = dg.define_asset_job(
    "publish_history",
    selection=["download_history"],
    partitions_def=download_days,
    description="Publish history/YYYY-MM-DD.parquet for the days given (a backfill: one run and one commit per batch of days).",
)


def daily_refresh_schedule(counts_source: str) -> dg.ScheduleDefinition:
    """The daily cycle's start. pypistats refreshes its data after 01:00 UTC, for the day before;
    ClickPy loads a day during the next one: both run at 02:00 UTC (a bulk run finding the day not
    loaded yet fails saying so)."""
    bulk = counts_source == "clickhouse"
    return dg.ScheduleDefinition(
        name="daily_refresh",
        job=bulk_job if bulk else plan_job,
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Count every project from ClickHouse and publish (COUNTS_SOURCE=clickhouse)."
            if bulk
            else "Start the daily cycle: plan the stale packages after pypistats has refreshed (01:00 UTC)."
        ),
    )


#: Yesterday's history file, every day after the counts are published.
daily_history_schedule = dg.build_schedule_from_partitioned_job(
    history_job, hour_of_day=4, default_status=dg.DefaultScheduleStatus.RUNNING, name="daily_history",
    description="Publish yesterday's download history (history/YYYY-MM-DD.parquet).",
)
