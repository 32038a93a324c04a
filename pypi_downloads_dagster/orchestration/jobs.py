"""Jobs and the schedule. A run without a partition key cannot include the partitioned
`recent_stats`, so a cycle is several runs: plan, one run per chunk, publish."""

import dagster as dg

from pypi_downloads_dagster.orchestration.partitions import recent_stats_chunks

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

# pypistats refreshes its data once a day, after 01:00 UTC: plan an hour later.
daily_refresh_schedule = dg.ScheduleDefinition(
    name="daily_refresh",
    job=plan_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Start the daily cycle: plan the stale packages after pypistats has refreshed (01:00 UTC).",
)
