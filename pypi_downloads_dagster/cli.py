"""`pypi-downloads-dagster sync`: one whole cycle headless, as real Dagster runs in the instance at
DAGSTER_HOME (plan, every chunk, publish), printing progress and a one-line summary."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import dagster as dg

from pypi_downloads_dagster.orchestration.cycle import CHECKPOINT, FINAL, PLAN_TAG, PUBLISH_TAG, stops_the_cycle
from pypi_downloads_dagster.dataset.store import FetchStore
from pypi_downloads_dagster.services.http import Pacing
from pypi_downloads_dagster.orchestration.partitions import busy_chunks
from pypi_downloads_dagster.services.pypistats import FetchProgress, format_duration
from pypi_downloads_dagster.run_control import add_progress_listener, remove_progress_listener, stop_requested
from pypi_downloads_dagster.settings import SettingsError, read_settings


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


class StopSignals:
    """The first SIGINT or SIGTERM stops the whole cycle: no request starts after it (the running
    chunk's answers are journaled), no further run starts, nothing is published. A second one
    exits at once.

    Dagster replaces the main thread's handlers during a run (and maps SIGTERM onto SIGINT), so
    which signal came is read from the wakeup fd, where Python writes every signal's number
    whatever handler runs; a thread of ours reads it and sets `stop_requested`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: Optional[int] = None

    def __enter__(self) -> "StopSignals":
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        self._previous_handlers = {signum: signal.signal(signum, self._interrupt) for signum in self.SIGNALS}
        threading.Thread(target=self._watch, args=(read_end,), name="stop-signals", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)

    @staticmethod
    def _interrupt(signum, frame) -> None:
        raise KeyboardInterrupt  # between runs; inside a run, Dagster's own handler interrupts the step

    def _watch(self, read_end: int) -> None:
        while True:
            signum = os.read(read_end, 1)[0]
            if signum not in self.SIGNALS:
                continue
            if self.received is not None:
                _say(f"{signal.Signals(signum).name} again: exiting now")
                os._exit(128 + signum)
            self.received = signum
            stop_requested.set()
            _say(f"{signal.Signals(signum).name}: stopping; the running chunk keeps what it got, nothing more starts")

    @property
    def exit_status(self) -> int:
        return 128 + (self.received or 0)


class ChunkProgress:
    """A progress bar per chunk on a terminal (tqdm); elsewhere the runs' own log lines say it."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, key: str, status: FetchProgress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=status.total, desc=f"[sync] chunk {key}", unit="pkg", dynamic_ncols=True)
        self.bar.n = status.done
        postfix = {"failed": status.failed}
        if status.last_error:
            postfix["last error"] = status.last_error[:60]
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _plan_eta(packages: int, settings) -> str:
    per_egress = 1 / Pacing(settings.max_per_second, settings.max_per_minute).interval
    return format_duration(packages / (per_egress * settings.egresses))


def sync(*, max_packages: Optional[int], chunk_size: int, stale_after_days: float, max_row_loss_share: float) -> int:
    """Run plan, chunks and publish; return the process exit status."""
    settings = read_settings(os.environ)
    with StopSignals() as signals:
        try:
            return _sync(signals, settings, max_packages, chunk_size, stale_after_days, max_row_loss_share)
        except KeyboardInterrupt:  # the stop arrived between two runs
            pass
        return _stopped(signals, "before the next step")


def _stopped(signals: StopSignals, where: str, kept: str = "every answer received") -> int:
    _say(
        f"summary: STOPPED by {signal.Signals(signals.received).name} {where}; {kept} is journaled in DAGSTER_HOME "
        "and used by the next sync or publish; nothing published"
    )
    return signals.exit_status


def _sync(signals, settings, max_packages, chunk_size, stale_after_days, max_row_loss_share) -> int:
    instance = _instance()
    from pypi_downloads_dagster.definitions import defs

    if settings.counts_source == "clickhouse":
        return _sync_bulk(signals, instance, defs, max_row_loss_share)

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
    if signals.received:
        return _stopped(signals, "while planning")
    if not plan.success:
        _say(f"plan run {plan.run_id} failed: {run_failure(plan)}")
        _say("summary: FAILED at planning; nothing fetched, nothing published")
        return 1
    index_meta = _materialization_metadata(plan, "pypi_index")
    plan_id = _materialization_metadata(plan, "stale_packages")["plan_id"]
    plan_frame = plan.output_for_node("stale_packages")
    # The plan's work: its own chunks and the older ones it kept (runs elsewhere hold them; if they
    # are done by the time we get there, their runs here ask for nothing).
    keys = list(_materialization_metadata(plan, "stale_packages")["chunk_keys"])
    _say(
        f"index: {index_meta.get('projects', '?')} projects; plan {plan_id}: {len(plan_frame)} stale packages in "
        f"{len(keys)} chunks, about {_plan_eta(len(plan_frame), settings)} at "
        f"{settings.max_per_minute:g}/min over {settings.egresses} egress(es)"
    )
    if keys:
        _say(
            f"chunk keys {keys[0]} .. {keys[-1]} (all in the chunk_keys metadata of stale_packages); one alone: "
            f"""dagster job execute -m pypi_downloads_dagster.definitions -j fetch_chunk --tags '{{"dagster/partition": "{keys[0]}"}}'"""
        )

    totals = {"valid": 0, "empty": 0, "failed": 0}
    failed_chunks, elsewhere = [], []
    chunk_job = defs.resolve_job_def("fetch_chunk")
    bar = ChunkProgress(enabled=sys.stdout.isatty())
    add_progress_listener(bar)
    try:
        for number, key in enumerate(keys, start=1):
            chunk_started = time.monotonic()
            if key in busy_chunks(instance):  # the daemon (or a backfill, or another sync) has it
                elsewhere.append(key)
                _say(f"chunk {number}/{len(keys)} {key}: fetched by another run of this instance; skipped")
                continue
            result = chunk_job.execute_in_process(
                instance=instance, partition_key=key, run_config=QUIET_LOGS, raise_on_error=False
            )
            bar.close()
            if signals.received:
                kept = len(FetchStore.in_storage(instance.storage_directory()).read(key))
                return _stopped(signals, f"during chunk {number}/{len(keys)} {key}", f"{kept} answers of that chunk")
            if not result.success and any(f"{name}:" in run_failure(result) for name in ("ChunkBusy", "ChunkRetired")):
                elsewhere.append(key)  # another run took it between the check above and this run
                _say(f"chunk {number}/{len(keys)} {key}: {run_failure(result)}")
                continue
            if not result.success:
                failed_chunks.append(key)
                failure = run_failure(result)
                _say(f"chunk {number}/{len(keys)} {key}: run {result.run_id} FAILED: {failure}")
                if stops_the_cycle(failure):
                    if number < len(keys):
                        _say(f"not starting the {len(keys) - number} chunks left: they would fail the same way")
                    break
                continue
            meta = _materialization_metadata(result, "recent_stats")
            for name in totals:
                totals[name] += int(meta.get(name, 0))
            _say(
                f"chunk {number}/{len(keys)} {key}: {meta.get('valid', 0)} valid, {meta.get('empty', 0)} empty, "
                f"{meta.get('failed', 0)} failed ({time.monotonic() - chunk_started:.1f}s)"
            )
    finally:
        remove_progress_listener(bar)
        bar.close()

    # With chunks left to other runs, this is a checkpoint: the cycle sensor publishes the final
    # version once they are done (and another `sync` publishes at its own end).
    publish = defs.resolve_job_def("publish_dataset").execute_in_process(
        instance=instance,
        run_config={**QUIET_LOGS, "ops": {"publish": {"config": {"max_row_loss_share": max_row_loss_share}}}},
        tags={PLAN_TAG: plan_id, PUBLISH_TAG: CHECKPOINT if elsewhere else FINAL},
        raise_on_error=False,
    )
    if signals.received and not publish.success:
        return _stopped(signals, "while publishing")
    fetched = f"fetched {totals['valid']} valid, {totals['empty']} empty, {totals['failed']} failed"
    elapsed = f"in {time.monotonic() - started:.0f}s"
    if not publish.success:
        _say(f"publish run {publish.run_id} failed: {run_failure(publish)}")
        _say(f"summary: FAILED to publish; {len(plan_frame)} planned, {fetched} {elapsed}")
        return 1
    card = _materialization_metadata(publish, "hf_dataset_card")
    outcome = f"published {card.get('last_commit')}" if card.get("committed") else "dataset already up to date, nothing committed"
    status = 0
    if elsewhere:
        outcome += f"; {len(elsewhere)} chunks left to the other runs fetching them, published when they are"
    if failed_chunks:
        outcome += f"; {len(failed_chunks)} chunk runs FAILED ({', '.join(failed_chunks[:5])}), their packages stay stale"
        status = 1
    _say(f"summary: {len(plan_frame)} planned in {len(keys)} chunks, {fetched}; {card.get('rows')} rows; {outcome} {elapsed}")
    return status


def _sync_bulk(signals, instance, defs, max_row_loss_share) -> int:
    """COUNTS_SOURCE=clickhouse: yesterday's history file, then every project counted in one query,
    cross-checked, and published: two runs."""
    from pypi_downloads_dagster.services.clickhouse import last_complete_day

    started = time.monotonic()
    day = last_complete_day(time.time())
    _say(f"counts source: ClickHouse ({_redacted(os.environ.get('CLICKHOUSE_URL', '') or 'ClickPy')}); day {day}")
    history = defs.resolve_job_def("publish_history").execute_in_process(
        instance=instance, partition_key=str(day), run_config=QUIET_LOGS, raise_on_error=False
    )
    if signals.received:
        return _stopped(signals, "while publishing the history")
    if not history.success:
        _say(f"history run {history.run_id} failed: {run_failure(history)}")
        _say("summary: FAILED at the history; nothing published")
        return 1
    history_meta = _materialization_metadata(history, "download_history")
    _say(f"history {day}: " + ("committed" if history_meta.get("committed") else "already published"))
    bulk = defs.resolve_job_def("bulk_refresh").execute_in_process(
        instance=instance,
        run_config={**QUIET_LOGS, "ops": {"publish": {"config": {"max_row_loss_share": max_row_loss_share}}}},
        tags={PUBLISH_TAG: FINAL},
        raise_on_error=False,
    )
    if signals.received and not bulk.success:
        return _stopped(signals, "while counting or publishing")
    elapsed = f"in {time.monotonic() - started:.0f}s"
    if not bulk.success:
        _say(f"bulk run {bulk.run_id} failed: {run_failure(bulk)}")
        _say(f"summary: FAILED; history of {day} {'published' if history_meta.get('committed') else 'unchanged'}, counts not published {elapsed}")
        return 1
    counts = _materialization_metadata(bulk, "bulk_counts")
    card = _materialization_metadata(bulk, "hf_dataset_card")
    outcome = f"published {card.get('last_commit')}" if card.get("committed") else "dataset already up to date, nothing committed"
    _say(f"cross-check: {counts.get('cross_check')}")
    _say(
        f"summary: {counts.get('projects')} projects counted for {counts.get('day')} ({counts.get('valid')} with downloads, "
        f"{counts.get('empty')} empty); {card.get('rows')} rows; {outcome} {elapsed}"
    )
    return 0


def _redacted(url: str) -> str:
    from pypi_downloads_dagster.services.http import redact_url

    return redact_url(url)


DESCRIPTION = """Keep a public dataset of PyPI download counts (last day, week and month per project,
from pypistats.org) and publish it to a Hugging Face dataset repo (or a local folder).

`sync` runs one whole cycle as real Dagster runs in the instance at DAGSTER_HOME: it plans the
stale packages, fetches them chunk by chunk, then publishes dataset.parquet, the card and the
charts in one commit. Ctrl-C (or SIGTERM) stops it: what was fetched is kept for the next run,
nothing is published. With COUNTS_SOURCE=clickhouse it publishes yesterday's history file, then
counts every project on the index in one ClickHouse query, checks a sample with pypistats and
publishes."""

ENVIRONMENT = """environment (see README.md):
  DAGSTER_HOME           the Dagster instance (runs, plans, fetched chunks); default ./.dagster_home
  PYPI_INDEX_URL         the simple index (default https://pypi.org/simple/)
  PYPISTATS_API_URL      the pypistats API (default https://pypistats.org/api)
  PYPISTATS_MAX_PER_SECOND, PYPISTATS_MAX_PER_MINUTE   pacing per egress (default 5 and 30)
  PYPISTATS_DOWN_AFTER   seconds every egress may fail in a row before a chunk gives up (default 60)
  PP_URL                 proxy pool, comma-separated http://user:pass@host:port (secret)
  HF_REPO_ID, HF_TOKEN, HF_ENDPOINT   the Hub dataset repo 'namespace/name', its token (secret), endpoint
  PYPI_DOWNLOADS_DIR     the local folder used when HF_REPO_ID is unset (default ./data/dataset)
  COUNTS_SOURCE          pypistats (default: per project, paced) or clickhouse (every project in one query)
  CLICKHOUSE_URL, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD   ClickPy's ClickHouse (default its public
                         https://sql-clickhouse.clickhouse.com, user demo, no password; the password a secret)
  CROSS_CHECK_SAMPLE     projects a bulk cycle asks pypistats to check the source (default 50)

exit status: 0 published or already up to date; 1 a run failed or the publish was refused;
2 a bad option or setting; 130/143 stopped by SIGINT/SIGTERM."""


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pypi-downloads-dagster", description=DESCRIPTION, epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sync_parser = commands.add_parser(
        "sync", help="run one whole cycle: plan, fetch every chunk, publish", description=DESCRIPTION, epilog=ENVIRONMENT,
        formatter_class=_HelpFormatter,
    )
    sync_parser.add_argument(
        "--max-packages", type=int, default=None, metavar="N",
        help="plan at most N stale packages; start with 200 (None: what the egresses fetch in a day)",
    )
    sync_parser.add_argument("--chunk-size", type=int, default=1000, metavar="N", help="packages per chunk")
    sync_parser.add_argument("--stale-after-days", type=float, default=30, metavar="D", help="refetch rows older than this")
    sync_parser.add_argument(
        "--max-row-loss-share", type=float, default=0.05, metavar="S",
        help="fail the plan when the index, and refuse the publish when the dataset, has fewer rows than the published one by more than this share (0 to 1)",
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
    home = os.environ.get("DAGSTER_HOME")
    if home and not Path(home).is_dir():
        parser.error(f"DAGSTER_HOME {home!r} is not a folder: create it (and copy deploy/dagster.yaml into it)")
    try:
        read_settings(os.environ)
    except SettingsError as exc:
        parser.error(str(exc))
    return sync(
        max_packages=args.max_packages,
        chunk_size=args.chunk_size,
        stale_after_days=args.stale_after_days,
        max_row_loss_share=args.max_row_loss_share,
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's lines and shows every option's default."""


if __name__ == "__main__":
    sys.exit(main())
