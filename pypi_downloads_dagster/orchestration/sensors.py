"""The sensor that runs the daily cycle under the daemon: after a plan, it launches the chunk runs
(a few at a time, failed ones again up to a limit), publishes checkpoints while they run, and
publishes once more when every chunk is done. The decisions are in `cycle.next_actions`."""

import time

import dagster as dg
from pydantic import Field

from pypi_downloads_dagster.orchestration.cycle import (
    CHUNKS_DONE_TAG,
    FINAL,
    PLAN_TAG,
    PUBLISH_TAG,
    ChunkState,
    PublishState,
    next_actions,
)
from pypi_downloads_dagster.orchestration.jobs import fetch_chunk_job, publish_job
from pypi_downloads_dagster.orchestration.partitions import ACTIVE_RUN_STATUSES, current_plan, partitions_in_progress
from pypi_downloads_dagster.orchestration.resources import PypistatsApi

FAILED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


class CycleSettings(dg.ConfigurableResource):
    """How the daily cycle runs unattended."""

    deploy_span_seconds: float = Field(default=300, description="Publish a checkpoint at most this often while chunks run.")
    max_chunk_attempts: int = Field(default=3, description="Runs per chunk before it is given up (its packages stay stale).")
    max_publish_attempts: int = Field(default=3, description="Final publish runs per plan before giving up.")


def _runs(instance, job_name: str, plan_id: str, statuses=None) -> list:
    return instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, tags={PLAN_TAG: plan_id}, statuses=statuses))


def chunk_states(instance: dg.DagsterInstance, plan_id: str, keys: list[str]) -> list[ChunkState]:
    done = instance.get_materialized_partitions(dg.AssetKey("recent_stats"))
    busy = partitions_in_progress(instance)
    failures: dict[str, int] = {}
    for record in _runs(instance, fetch_chunk_job.name, plan_id, FAILED):
        key = record.dagster_run.tags.get("dagster/partition")
        failures[key] = failures.get(key, 0) + 1
    return [ChunkState(key, key in done, key in busy, failures.get(key, 0)) for key in keys]


def publish_state(instance: dg.DagsterInstance, plan_id: str) -> PublishState:
    records = _runs(instance, publish_job.name, plan_id)
    if not records:
        return PublishState()
    latest = max(records, key=lambda r: r.create_timestamp.timestamp())
    final = [r for r in records if r.dagster_run.tags.get(PUBLISH_TAG) == FINAL]
    return PublishState(
        in_progress=any(r.dagster_run.status in ACTIVE_RUN_STATUSES for r in records),
        last_started=latest.create_timestamp.timestamp(),
        chunks_done_at_last=int(latest.dagster_run.tags.get(CHUNKS_DONE_TAG, -1)),
        final_succeeded=any(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in final),
        final_failures=sum(r.dagster_run.status in FAILED for r in final),
    )


def build_cycle_sensor(minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name="daily_cycle",
        jobs=[fetch_chunk_job, publish_job],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs the current plan to the end: chunk runs, checkpoints every deploy span, the final publish.",
    )
    def daily_cycle(context: dg.SensorEvaluationContext, cycle: CycleSettings, pypistats: PypistatsApi):
        plan = current_plan(context.instance)
        if plan is None:
            return dg.SkipReason("no plan yet: launch plan_refresh (the daily_refresh schedule does)")
        plan_id, keys, plan_started = plan
        chunks = chunk_states(context.instance, plan_id, keys)
        publish = publish_state(context.instance, plan_id)
        egresses = len(pypistats.proxy_pool.egresses())
        actions = next_actions(
            chunks,
            publish,
            now=time.time(),
            plan_started=plan_started,
            deploy_span=cycle.deploy_span_seconds,
            max_chunk_attempts=cycle.max_chunk_attempts,
            max_in_flight=2 * egresses,
            max_publish_attempts=cycle.max_publish_attempts,
        )
        context.log.info(f"plan {plan_id}: {actions.summary}")
        # The cursor remembers what was reported, so a give-up is warned about once, not every tick.
        cursor = f"{plan_id}:{len(actions.given_up)}"
        if actions.given_up and context.cursor != cursor:
            context.log.warning(
                f"plan {plan_id}: gave up on {len(actions.given_up)} chunks after {cycle.max_chunk_attempts} "
                f"failed runs each; their packages stay stale for the next plan: {actions.given_up[:10]}"
            )
        requests = [
            dg.RunRequest(
                run_key=f"{launch.key}#{launch.attempt}",
                job_name=fetch_chunk_job.name,
                partition_key=launch.key,
                tags={PLAN_TAG: plan_id},
            )
            for launch in actions.chunks
        ]
        if actions.publish:
            done = sum(chunk.done for chunk in chunks)
            attempt = publish.final_failures + 1 if actions.publish == FINAL else done
            requests.append(
                dg.RunRequest(
                    run_key=f"publish-{plan_id}-{actions.publish}-{attempt}",
                    job_name=publish_job.name,
                    tags={PLAN_TAG: plan_id, PUBLISH_TAG: actions.publish, CHUNKS_DONE_TAG: str(done)},
                )
            )
        if not requests:
            return dg.SensorResult(skip_reason=f"plan {plan_id}: {actions.summary}", cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return daily_cycle
