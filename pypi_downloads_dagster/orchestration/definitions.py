"""The code location: assets, jobs, schedule and resources configured from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from pypi_downloads_dagster.orchestration import assets
from pypi_downloads_dagster.orchestration.jobs import bulk_job, daily_history_schedule, daily_refresh_schedule, fetch_chunk_job, history_job, plan_job, publish_job
from pypi_downloads_dagster.orchestration.resources import AtomicFilesystemIOManager, ClickHouseSource, DatasetRepoResource, ProxyPool, PypiIndexSource, PypistatsApi
from pypi_downloads_dagster.orchestration.sensors import CycleSettings, build_cycle_sensor
from pypi_downloads_dagster.settings import read_settings


def _secret(env: Mapping[str, str], name: str):
    """Secrets go in as EnvVar so Dagster resolves them at launch and never shows the value."""
    return dg.EnvVar(name) if env.get(name, "").strip() else None


def resources_from_env(env: Mapping[str, str] = os.environ) -> dict:
    """The resources, configured from the environment variables listed in README.md (read and
    checked by `settings.read_settings`; a bad one raises SettingsError naming it)."""
    settings = read_settings(env)
    proxy_pool = ProxyPool(urls=_secret(env, "PP_URL") or "")
    return {
        "proxy_pool": proxy_pool,
        "index_source": PypiIndexSource(url=settings.index_url, proxy_pool=proxy_pool),
        "pypistats": PypistatsApi(
            url=settings.stats_url,
            max_per_second=settings.max_per_second,
            max_per_minute=settings.max_per_minute,
            down_after=settings.down_after_seconds,
            proxy_pool=proxy_pool,
        ),
        "dataset_repo": DatasetRepoResource(
            repo_id=settings.hf_repo_id,
            token=_secret(env, "HF_TOKEN"),
            endpoint=settings.hf_endpoint,
            local_dir=settings.local_dir,
        ),
        "clickhouse": ClickHouseSource(
            enabled=settings.counts_source == "clickhouse",
            url=settings.clickhouse_url,
            user=settings.clickhouse_user,
            password=_secret(env, "CLICKHOUSE_PASSWORD"),
            cross_check_sample=settings.cross_check_sample,
        ),
        "io_manager": AtomicFilesystemIOManager(),
        "cycle": CycleSettings(deploy_span_seconds=settings.deploy_span_seconds, max_chunk_attempts=settings.chunk_attempts),
    }


def build_definitions(env: Mapping[str, str] = os.environ) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules([assets]),
        jobs=[plan_job, fetch_chunk_job, publish_job, bulk_job, history_job],
        schedules=[daily_refresh_schedule(read_settings(env).counts_source), daily_history_schedule],
        sensors=[build_cycle_sensor(read_settings(env).sensor_interval_seconds)],
        resources=resources_from_env(env),
        # Each run's steps in its own process: no process per step, and a killed run is one process.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
