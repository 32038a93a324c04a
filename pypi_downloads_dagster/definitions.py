"""The code location: assets, jobs, schedule and resources configured from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from pypi_downloads_dagster import assets
from pypi_downloads_dagster.jobs import daily_refresh_schedule, fetch_chunk_job, plan_job, publish_job
from pypi_downloads_dagster.resources import (
    DEFAULT_INDEX_URL,
    DEFAULT_LOCAL_DIR,
    DatasetRepoResource,
    ProxyPool,
    PypiIndexSource,
    PypistatsApi,
)
from pypi_downloads_dagster.pypistats import DEFAULT_API_URL
from pypi_downloads_dagster.sensors import CycleSettings, build_cycle_sensor


def _number(env: Mapping[str, str], name: str, default: float):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def _secret(env: Mapping[str, str], name: str):
    """Secrets go in as EnvVar so Dagster resolves them at launch and never shows the value."""
    return dg.EnvVar(name) if env.get(name) else None


def resources_from_env(env: Mapping[str, str] = os.environ) -> dict:
    """The resources, configured from the environment variables listed in README.md. This is the
    one place where the environment is read."""
    proxy_pool = ProxyPool(urls=_secret(env, "PP_URL") or "")
    return {
        "index_source": PypiIndexSource(url=env.get("PYPI_INDEX_URL") or DEFAULT_INDEX_URL, proxy_pool=proxy_pool),
        "pypistats": PypistatsApi(
            url=env.get("PYPISTATS_API_URL") or DEFAULT_API_URL,
            max_per_second=_number(env, "PYPISTATS_MAX_PER_SECOND", 5.0),
            max_per_minute=_number(env, "PYPISTATS_MAX_PER_MINUTE", 30.0),
            proxy_pool=proxy_pool,
        ),
        "dataset_repo": DatasetRepoResource(
            repo_id=env.get("HF_REPO_ID") or None,
            token=_secret(env, "HF_TOKEN"),
            endpoint=env.get("HF_ENDPOINT") or None,
            local_dir=env.get("PYPI_DOWNLOADS_DIR") or DEFAULT_LOCAL_DIR,
        ),
        "cycle": CycleSettings(
            deploy_span_seconds=_number(env, "PYPI_DOWNLOADS_DEPLOY_SPAN", 300),
            max_chunk_attempts=int(_number(env, "PYPI_DOWNLOADS_CHUNK_ATTEMPTS", 3)),
        ),
    }


def build_definitions(env: Mapping[str, str] = os.environ) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules([assets]),
        jobs=[plan_job, fetch_chunk_job, publish_job],
        schedules=[daily_refresh_schedule],
        sensors=[build_cycle_sensor(int(_number(env, "PYPI_DOWNLOADS_SENSOR_INTERVAL", 30)))],
        resources=resources_from_env(env),
        # Each run's steps in its own process: no process per step, and a killed run is one process.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
