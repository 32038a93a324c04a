"""`pypi-downloads-dagster sync`: one whole cycle headless, as real Dagster runs in the instance at
DAGSTER_HOME (plan, every chunk, publish), printing progress and a one-line summary."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import dagster as dg

from pypi_downloads_dagster.cycle import FINAL, PLAN_TAG, PUBLISH_TAG


DEFAULT_DAGSTER_HOME = ".dagster_home"


def _say(message: str) -> None:
    print(f"[sync] {message}", flush=True)


def _instance() -> dg.DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        home = Path(DEFAULT_DAGSTER_HOME).resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
        # The shipped instance config, deploy/dagster.yaml in the project's checkout: beside this
        # package (an editable install, as README.md sets it up), else under the current folder.
        candidates = [Path(__file__).resolve().parents[1], Path.cwd()]
        shipped = next((p / "deploy" / "dagster.yaml" for p in candidates if (p / "deploy" / "dagster.yaml").is_file()), None)
        if (home / "dagster.yaml").exists():
            _say(f"DAGSTER_HOME is not set; using {home}")
        elif shipped is not None:
            shutil.copy(shipped, home / "dagster.yaml")
            _say(f"DAGSTER_HOME is not set; using {home} (instance config copied from {shipped})")
        else:
            _say(f"DAGSTER_HOME is not set; using {home} (no deploy/dagster.yaml found: Dagster's default instance)")
    return dg.DagsterInstance.get()


def _materialization_metadata(result, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.to_user_string() == asset:
            return {key: value.value for key, value in materialization.metadata.items()}
    return {}


def run_failure(result) -> str:
    """The reason a run failed, in one line: a `dg.Failure`'s description, else the innermost error."""
    for event in result.all_events:
        data = event.step_failure_data if event.is_step_failure else None
        if data is None:
            continue
        if data.user_failure_data and data.user_failure_data.description:
            return f"{event.step_key}: {data.user_failure_data.description}"
        error = data.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            return f"{event.step_key}: {error.message.strip().splitlines()[-1]}"
    return "see the run's logs in the Dagster UI"


#: Dagster's console logger at INFO: the runs' own messages without the DEBUG event stream.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def sync(*, max_packages: Optional[int], chunk_size: int, stale_after_days: float, max_row_loss_share: float) -> int:
    """Run plan, chunks and publish; return the process exit status."""
    instance = _instance()
    from pypi_downloads_dagster.definitions import defs

    started = time.monotonic()
    plan_config = {
        "stale_after_days": stale_after_days,
        "chunk_size": chunk_size,
        "max_packages": max_packages,
        "max_row_loss_share": max_row_loss_share,
    }
    plan = defs.resolve_job_def("plan_refresh").execute_in_process(
        instance=instance,
        run_config={**QUIET_LOGS, "ops": {"stale_packages": {"config": plan_config}}},
        raise_on_error=False,
    )
    if not plan.success:
        _say(f"plan run {plan.run_id} failed: {run_failure(plan)}")
        _say("summary: FAILED at planning; nothing fetched, nothing published")
        return 1
    index_meta = _materialization_metadata(plan, "pypi_index")
    plan_id = _materialization_metadata(plan, "stale_packages")["plan_id"]
    plan_frame = plan.output_for_node("stale_packages")
    keys = list(dict.fromkeys(plan_frame["chunk"]))
    _say(f"index: {index_meta.get('projects', '?')} projects; plan: {len(plan_frame)} stale packages in {len(keys)} chunks")

    totals = {"valid": 0, "empty": 0, "failed": 0}
    failed_chunks = []
    chunk_job = defs.resolve_job_def("fetch_chunk")
    for number, key in enumerate(keys, start=1):
        chunk_started = time.monotonic()
        result = chunk_job.execute_in_process(
            instance=instance, partition_key=key, run_config=QUIET_LOGS, raise_on_error=False
        )
        if not result.success:
            failed_chunks.append(key)
            _say(f"chunk {number}/{len(keys)} {key}: run {result.run_id} FAILED: {run_failure(result)}")
            continue
        meta = _materialization_metadata(result, "recent_stats")
        for name in totals:
            totals[name] += int(meta.get(name, 0))
        _say(
            f"chunk {number}/{len(keys)} {key}: {meta.get('valid', 0)} valid, {meta.get('empty', 0)} empty, "
            f"{meta.get('failed', 0)} failed ({time.monotonic() - chunk_started:.1f}s)"
        )

    publish = defs.resolve_job_def("publish_dataset").execute_in_process(
        instance=instance,
        run_config={**QUIET_LOGS, "ops": {"publish": {"config": {"max_row_loss_share": max_row_loss_share}}}},
        tags={PLAN_TAG: plan_id, PUBLISH_TAG: FINAL},
        raise_on_error=False,
    )
    fetched = f"fetched {totals['valid']} valid, {totals['empty']} empty, {totals['failed']} failed"
    elapsed = f"in {time.monotonic() - started:.0f}s"
    if not publish.success:
        _say(f"publish run {publish.run_id} failed: {run_failure(publish)}")
        _say(f"summary: FAILED to publish; {len(plan_frame)} planned, {fetched} {elapsed}")
        return 1
    card = _materialization_metadata(publish, "hf_dataset_card")
    outcome = f"published {card.get('last_commit')}" if card.get("committed") else "dataset already up to date, nothing committed"
    status = 0
    if failed_chunks:
        outcome += f"; {len(failed_chunks)} chunk runs FAILED ({', '.join(failed_chunks[:5])}), their packages stay stale"
        status = 1
    _say(f"summary: {len(plan_frame)} planned in {len(keys)} chunks, {fetched}; {card.get('rows')} rows; {outcome} {elapsed}")
    return status


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pypi-downloads-dagster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sync_parser = commands.add_parser("sync", help="run one whole cycle: plan, fetch every chunk, publish")
    sync_parser.add_argument("--max-packages", type=int, default=None, help="plan at most N stale packages")
    sync_parser.add_argument("--chunk-size", type=int, default=1000, help="packages per chunk (default 1000)")
    sync_parser.add_argument("--stale-after-days", type=float, default=30, help="refetch rows older than this (default 30)")
    sync_parser.add_argument(
        "--max-row-loss-share", type=float, default=0.05, help="fail the plan when the index, and refuse the publish when the dataset, has fewer rows than the published one by more than this share (0-1, default 0.05)"
    )
    args = parser.parse_args(argv)
    if args.chunk_size < 1:
        parser.error("--chunk-size must be at least 1")
    if args.max_packages is not None and args.max_packages < 0:
        parser.error("--max-packages must be 0 or more")
    if not 0 <= args.max_row_loss_share <= 1:  # also refuses nan
        parser.error("--max-row-loss-share must be a share between 0 and 1")
    if not 0 < args.stale_after_days < float("inf"):
        parser.error("--stale-after-days must be a positive number of days")
    return sync(
        max_packages=args.max_packages,
        chunk_size=args.chunk_size,
        stale_after_days=args.stale_after_days,
        max_row_loss_share=args.max_row_loss_share,
    )


if __name__ == "__main__":
    sys.exit(main())
