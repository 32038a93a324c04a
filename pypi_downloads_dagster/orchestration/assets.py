"""The lineage as Dagster assets: index -> existing dataset -> stale plan -> chunked pypistats
fetches -> merged dataset -> charts -> dataset card, published in one commit. Each asset is a thin
wrapper: the work is in the plain modules, the asset reports what happened."""


import contextlib
import datetime as dt
import threading
import time
import warnings
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from pypi_downloads_dagster.dataset.bulk import (
    CrossCheck,
    DayNotLoaded,
    bulk_fetched,
    check_day_loaded,
    cross_check,
    history_days,
    history_files,
    history_from_dataset,
    history_path,
    merge_history,
    read_history_file,
    sample_across_popularity,
)
from pypi_downloads_dagster.publishing.card import HistoryInfo, card_without_front_matter, markdown_table, render_dataset_card, utc_time
from pypi_downloads_dagster.services.clickhouse import ClickHouseError, daily_history, daily_totals, last_complete_day, recent_counts, top_trend
from pypi_downloads_dagster.publishing.charts import chart_thumbnails_markdown, render_charts
from pypi_downloads_dagster.orchestration.cycle import PLAN_TAG, PUBLISH_TAG, describe_refresh
from pypi_downloads_dagster.dataset.frames import choose_canary, merge_dataset, newest_fetches, plan_stale
from pypi_downloads_dagster.dataset.store import FetchStore
from pypi_downloads_dagster.dataset.guards import CHECK_DESCRIPTIONS, IndexTooShort, PublishGuards, PublishRefused, check_index_length
from pypi_downloads_dagster.services.http import HttpError, ServiceDown
from pypi_downloads_dagster.publishing.hub import DatasetReadError, ExistingDataset, PublishConflict, read_existing_dataset
from pypi_downloads_dagster.services.pypi_index import IndexFormatError
from pypi_downloads_dagster.orchestration.leases import EGRESS, EgressLeases, Keeper, LeaseTable, chunk_lease, holder_name
from pypi_downloads_dagster.orchestration.partitions import (
    FETCHING_RUNS,
    PYPISTATS_POOL,
    current_plan,
    download_days,
    latest_metadata,
    leased_chunks,
    live_leases,
    recent_stats_chunks,
    retire_chunk_keys,
)
from pypi_downloads_dagster.publishing.publish import Publication, publish_files, publish_snapshot
from pypi_downloads_dagster.services.pypistats import (
    BrokenClock,
    FetchProgress,
    FetchStopped,
    WrongStatsEndpoint,
    RecentCounts,
    check_canary,
    counts_day_of,
    counts_day_start,
    describe_progress,
    fetch_many,
)
from pypi_downloads_dagster.run_control import AnyOf, report_progress, stop_requested
from pypi_downloads_dagster.orchestration.resources import ClickHouseSource, DatasetRepoResource, PypiIndexSource, PypistatsApi
from pypi_downloads_dagster.dataset.schema import COLUMN_DOCS, DATASET_FILE, STATUS_EMPTY, STATUS_VALID, dataset_to_parquet, normalize_names

GROUP = "pypi_downloads"
PREVIEW_ROWS = 10
DATASET_TABLE_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn(name, kind, description=doc) for name, (kind, doc) in COLUMN_DOCS.items()]
)


class IndexConfig(dg.Config):
    min_projects: int = Field(default=1, description="Fail when the index lists fewer valid projects than this.")


def _share(default: float, description: str):
    return Field(default=default, ge=0, le=1, description=description)


class PlanConfig(dg.Config):
    stale_after_days: float = Field(default=30, gt=0, description="Refetch rows older than this many days.")
    max_packages: Optional[int] = Field(default=None, ge=0, description="Plan at most this many packages per cycle.")
    chunk_size: int = Field(default=1000, ge=1, description="Packages per recent_stats partition.")
    max_row_loss_share: float = _share(
        0.05, "Fail the plan when the index lists fewer projects than the published dataset has rows, by more than this share."
    )


class PublishConfig(dg.Config):
    """The publish guards (see README, "What protects the dataset"); each a share in [0, 1]."""

    max_row_loss_share: float = _share(0.05, "Refuse when the dataset would lose more than this share of its rows.")
    max_counted_row_loss_share: float = _share(0.05, "Refuse when it would lose more than this share of its rows with counts.")
    max_month_total_drop_share: float = _share(0.25, "Refuse when the total of last_month would fall by more than this share.")
    max_valid_to_empty_share: float = _share(
        0.2, "Refuse when more than this share of the rows with counts fetched again turn empty (from 10 rows on)."
    )

    def guards(self) -> PublishGuards:
        return PublishGuards(
            self.max_row_loss_share, self.max_counted_row_loss_share, self.max_month_total_drop_share, self.max_valid_to_empty_share
        )


class ChunkBusy(RuntimeError):
    """Another run holds the chunk's lease: it is fetching the chunk now."""


class ChunkRetired(RuntimeError):
    """The chunk's key was removed by a newer plan, which took its packages."""


#: Failures with a message that says it all: shown as such in the UI and by `sync`, no traceback hunt.
EXPECTED_FAILURES = (
    HttpError,
    IndexFormatError,
    IndexTooShort,
    DatasetReadError,
    PublishRefused,
    PublishConflict,
    PermissionError,
    WrongStatsEndpoint,
    BrokenClock,
    ChunkBusy,
    ChunkRetired,
    ClickHouseError,
    DayNotLoaded,
)


@contextlib.contextmanager
def failing_clearly():
    try:
        yield
    except EXPECTED_FAILURES as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}") from None


def fetch_store(context) -> FetchStore:
    """Fetched chunks awaiting publication, kept in the Dagster instance's storage folder."""
    return FetchStore.in_storage(context.instance.storage_directory())


def _plan_canary(instance: dg.DagsterInstance) -> str:
    metadata, _ = latest_metadata(instance, "stale_packages")
    return metadata["canary"].value if "canary" in metadata else ""


def _preview(frame: pd.DataFrame) -> dg.MetadataValue:
    head = frame.head(PREVIEW_ROWS)
    if "updated_at" in head.columns:  # Unix seconds in the file; a person reads UTC time
        head = head.assign(updated_at=head["updated_at"].map(utc_time))
    return dg.MetadataValue.md(markdown_table(head) if len(frame) else "(no rows)")


def _row_count(frame: pd.DataFrame, dataset_schema: bool = False) -> dict:
    """Dagster's standard metadata: the UI shows row counts and, for the dataset, its columns."""
    metadata = {"dagster/row_count": dg.MetadataValue.int(len(frame))}
    if dataset_schema:
        metadata["dagster/column_schema"] = DATASET_TABLE_SCHEMA
    return metadata


def _status_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {
        "rows": len(frame),
        "valid": int((frame["status"] == STATUS_VALID).sum()),
        "empty": int((frame["status"] == STATUS_EMPTY).sum()),
        "never_fetched": int(frame["updated_at"].isna().sum()),
    }


@dg.asset(group_name=GROUP, kinds={"pandas"})
def pypi_index(context: dg.AssetExecutionContext, config: IndexConfig, index_source: PypiIndexSource) -> dg.Output[pd.DataFrame]:
    """Every project on the PyPI simple index (PEP 691 JSON, PEP 503 HTML as fallback): display
    name, normalized name and project URL. Invalid names are dropped and counted."""
    with failing_clearly():
        index = index_source.fetch(min_projects=config.min_projects)
    if index.invalid_names:
        context.log.warning(f"dropped {len(index.invalid_names)} invalid project names, e.g. {index.invalid_names[:5]!r}")
    return dg.Output(
        index.projects,
        metadata={
            "projects": len(index.projects),
            "invalid_names_dropped": len(index.invalid_names),
            "duplicate_names_dropped": index.duplicates,
            "format": index.format,
            "last_serial": index.last_serial if index.last_serial is not None else -1,
            **_row_count(index.projects),
            "preview": _preview(index.projects),
        },
    )


@dg.asset(group_name=GROUP, kinds={"pandas", "huggingface"})
def existing_dataset(dataset_repo: DatasetRepoResource) -> dg.Output[ExistingDataset]:
    """The dataset as currently published (dataset.parquet, else the older dataset.csv), migrated to
    the current schema. Empty only when the repo or both files do not exist; any other failure
    fails the run."""
    repo = dataset_repo.repo()
    with failing_clearly():
        existing = read_existing_dataset(repo)
    return dg.Output(
        existing,
        metadata={
            **_status_counts(existing.frame),
            "source": f"{repo.description}: {existing.source or 'no dataset file yet'}",
            "revision": existing.revision or "none (repo does not exist yet)",
            **_row_count(existing.frame, dataset_schema=True),
            "preview": _preview(existing.frame),
        },
    )


@dg.asset(group_name=GROUP, kinds={"pandas"})
def stale_packages(
    context: dg.AssetExecutionContext,
    config: PlanConfig,
    pypi_index: pd.DataFrame,
    existing_dataset: ExistingDataset,
    pypistats: PypistatsApi,
) -> dg.Output[pd.DataFrame]:
    """The plan of this cycle: projects never fetched or fetched more than `stale_after_days` ago,
    oldest first, as many as the egresses can fetch in a day, split into chunks that become the
    partitions of `recent_stats` (replacing the previous plan's). Rows fetched but not yet
    published count as fetched, so they are not planned again."""
    with failing_clearly():
        check_index_length(len(pypi_index), len(existing_dataset.frame), config.max_row_loss_share)
    started = dt.datetime.fromtimestamp(time.time(), dt.timezone.utc)
    plan_id = started.strftime("%Y%m%dT%H%M%S")
    store = fetch_store(context)
    # Chunks of earlier plans that runs fetch or will fetch (running, queued, leased, in a
    # backfill) keep their keys and their packages; every other old key goes.
    removed, kept = retire_chunk_keys(context.instance)
    store.drop_plans(removed)
    held = _held_packages(store, kept)
    pending = store.read_all()
    known, _ = merge_dataset(existing_dataset.frame, pypi_index, newest_fetches(pending.values()), now=started.timestamp())
    stale = plan_stale(
        pypi_index,
        known,
        now=started.timestamp(),
        plan_id=plan_id,
        stale_after_days=config.stale_after_days,
        chunk_size=config.chunk_size,
        held=held,
    )
    # Unless told otherwise, plan one day of work: tomorrow's plan takes over what is left.
    cap = config.max_packages if config.max_packages is not None else pypistats.daily_capacity()
    plan = stale.head(cap)
    keys = list(dict.fromkeys(plan["chunk"]))
    # The plan's work: its own chunks, and the kept older ones (a run holds them now, or will; if
    # it dies, the cycle runs them again as part of this plan).
    older = sorted(kept - set(keys))
    for key, names in plan.groupby("chunk", sort=False)["normalized"]:
        store.save_plan(key, names.tolist())  # before the key exists: a run of it always finds them
    context.instance.add_dynamic_partitions(recent_stats_chunks.name, keys)
    context.instance.event_log_storage.set_concurrency_slots(PYPISTATS_POOL, FETCHING_RUNS)
    context.log.info(
        f"plan {plan_id}: {len(plan)} of {len(stale)} stale packages in {len(keys)} chunks; {len(removed)} older "
        f"chunk keys removed; {len(kept)} kept for the runs that fetch them ({len(held)} packages left to them)"
    )
    return dg.Output(
        plan,
        metadata={
            "plan_id": plan_id,
            "canary": choose_canary(existing_dataset.frame) or "",
            "packages": len(plan),
            "stale_packages": len(stale),
            "cap": cap,
            "never_fetched": int(plan["updated_at"].isna().sum()),
            "chunks": len(keys),
            "older_chunk_keys_removed": len(removed),
            "older_chunk_keys_kept": len(kept),
            "packages_held_by_older_chunks": len(held),
            "unpublished_chunks_counted_as_fetched": len(pending),
            "chunk_keys": dg.MetadataValue.json(older + keys),
            **_row_count(plan),
            "preview": _preview(plan),
        },
    )


def _held_packages(store: FetchStore, keys) -> set[str]:
    held: set[str] = set()
    for key in keys:
        with contextlib.suppress(KeyError):  # a key planned before plans were stored: nothing known
            held.update(store.planned(key))
    return held


@contextlib.contextmanager
def chunk_leases(context: dg.AssetExecutionContext, key: str, egress_labels: list[str], lost: threading.Event):
    """Hold chunk `key` for this run (or raise ChunkBusy / ChunkRetired) and lease egresses while
    the block runs; every lease is released after it, and expires if this process dies."""
    keeper = Keeper(LeaseTable.of_instance(context.instance), holder_name(context.run.run_id), on_lost=lambda names: lost.set())
    try:
        taken = keeper.take(chunk_lease(key))
        if not taken and key not in leased_chunks(context.instance):  # its holder's run had ended: released now
            taken = keeper.take(chunk_lease(key))
        if not taken:
            holder = leased_chunks(context.instance).get(key, "another run")
            raise ChunkBusy(f"chunk {key} is being fetched by {holder}; this run asked for nothing")
        # Checked after taking the lease: a plan deletes keys, then reads the leases (`retire_chunk_keys`).
        if not context.instance.has_dynamic_partition(recent_stats_chunks.name, key):
            raise ChunkRetired(f"chunk {key} was removed by a newer plan, which took its packages; this run asked for nothing")
        egresses = EgressLeases(keeper, egress_labels, clear_dead=lambda: live_leases(context.instance, EGRESS))
        try:
            yield egresses
        finally:
            egresses.close()
    finally:
        keeper.close()


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    partitions_def=recent_stats_chunks,
    pool=PYPISTATS_POOL,
    deps=["stale_packages"],
    check_specs=[dg.AssetCheckSpec("every_package_answered", asset="recent_stats", description="No package failed after retries.")],
)
def recent_stats(context: dg.AssetExecutionContext, pypistats: PypistatsApi) -> dg.MaterializeResult:
    """Recent download counts (last day/week/month) from pypistats for one chunk of a plan,
    requested by normalized name. 404 records 'empty'; packages that still fail after retries are
    left out (their rows stay as they were) and reported by the check. Each chunk is stored on its
    own until a publish has taken it in.

    One run fetches a chunk at a time, and a package fetched today by any chunk is not asked
    again; egresses are leased, so runs on any machine share them without exceeding their pacing."""
    key = context.partition_key
    store = fetch_store(context)
    try:
        planned = store.planned(key)
    except KeyError:
        raise dg.Failure(
            f"chunk {key} has no recorded packages (a key no plan made, or made before plans were stored): "
            "materialize stale_packages to plan again"
        ) from None
    lost = threading.Event()
    with failing_clearly(), chunk_leases(context, key, [e.label for e in pypistats.proxy_pool.egresses()], lost) as egresses:
        return _fetch_chunk(context, key, planned, store, pypistats, egresses, lost)


def _fetch_chunk(context, key, planned, store, pypistats, egresses, lost) -> dg.MaterializeResult:
    client = pypistats.client(gate=egresses)
    egresses.resting = client.resting  # an egress given up rests until its pacing allows the next request
    if not egresses.held():
        context.log.info(f"chunk {key}: every egress is leased by other runs ({egresses.holders()}); waiting for one")
    canary = _plan_canary(context.instance)
    if canary:
        # A project the published dataset knows to have counts: if the API does not know it, the
        # URL or a proxy is wrong, and every 404 would wrongly record `empty`.
        with failing_clearly():
            try:
                check_canary(client, pypistats.url, canary)
            except HttpError as exc:  # a project it must know cannot be fetched: so can no other
                raise ServiceDown(f"the stats API did not answer for {canary}: {exc}") from None
    # Asked today by any chunk of any plan: the counts cannot have changed since.
    fetched_today = store.fetched_since(counts_day_start(time.time()))
    already = [name for name in planned if name in fetched_today]
    names = [name for name in planned if name not in fetched_today]
    context.log.info(
        f"chunk {key}: {len(names)} packages to fetch ({len(already)} already fetched today) over the egresses "
        f"this run leases ({len(egresses.held())} of {len(client.egresses)} now), one request per {client.pacing.interval:.2f}s each"
    )
    started = time.monotonic()
    last_report = [started]

    def progress(status: FetchProgress) -> None:
        report_progress(key, status)  # a bar in `sync`; nothing under the daemon
        now = time.monotonic()
        if status.done == status.total or now - last_report[0] >= 30:
            last_report[0] = now
            context.log.info(f"chunk {key}: {describe_progress(status, now)}")

    with store.journal(key, context.run.run_id) as record:
        try:
            result = fetch_many(client, pypistats.url, names, on_status=progress, on_result=record, stop=AnyOf(stop_requested, lost))
            egresses_used = len(egresses.held())
            egresses.close()  # free for the next run now, not after the file is written
        except FetchStopped as stopped:
            why = "a lease of this run expired and was taken (the process stalled past its ttl)" if lost.is_set() else "stopped when told"
            raise dg.Failure(
                f"chunk {key}: {why}; {len(stopped.result.fetched)} answers of this run are journaled "
                f"and kept, {len(stopped.not_asked)} packages not asked (a re-run asks only for those)"
            ) from None
    seconds = time.monotonic() - started
    failed_sample = dict(list(result.failed.items())[:20])
    if len(result.fetched) == 0 and result.failed and not already:
        raise dg.Failure(
            f"chunk {key}: all {len(names)} packages failed, e.g. {next(iter(result.failed.values()))}",
            metadata={"failed": len(result.failed), "failures": dg.MetadataValue.json(failed_sample)},
        )
    stored = store.write(key, result.fetched, context.run.run_id)
    return dg.MaterializeResult(
        metadata={
            "planned": len(planned),
            "already_fetched_today": len(already),
            "requested": len(names),
            "valid": result.valid,
            "empty": result.empty,
            "failed": len(result.failed),
            "seconds": round(seconds, 1),
            "requests_per_second": round(len(names) / seconds, 2) if seconds else 0.0,
            "egresses_leased_at_end": egresses_used,
            "stored_at": dg.MetadataValue.path(str(stored)),
            "preview": _preview(result.fetched),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="every_package_answered",
                passed=not result.failed,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"failed": len(result.failed), "failures": dg.MetadataValue.json(failed_sample)},
            )
        ],
    )


@dg.asset(
    group_name=GROUP,
    kinds={"clickhouse", "pandas"},
    check_specs=[
        dg.AssetCheckSpec(
            "agrees_with_pypistats", asset="bulk_counts",
            description="A sample across popularity, asked of pypistats.org: the share that agrees exactly, and the median difference.",
        )
    ],
)
def bulk_counts(
    context: dg.AssetExecutionContext, pypi_index: pd.DataFrame, clickhouse: ClickHouseSource, pypistats: PypistatsApi
) -> dg.MaterializeResult:
    """With COUNTS_SOURCE=clickhouse: every project on the index, counted from ClickPy's daily
    download table in one query with pypistats' definition (mirrors excluded; D the last complete
    UTC day), stored like a fetched chunk so the publish merges and guards it as any other fetch.
    Then a sample across popularity is asked of pypistats to check the source."""
    if not clickhouse.enabled:
        raise dg.Failure("bulk_counts needs COUNTS_SOURCE=clickhouse (the source is pypistats: run the daily cycle instead)")
    started = time.time()
    day = last_complete_day(started)
    client = clickhouse.client()
    stages: dict[str, float] = {}
    with failing_clearly():
        mark = time.monotonic()
        check_day_loaded(daily_totals(client, day - dt.timedelta(days=1), day), day)
        stages["check D is loaded"] = time.monotonic() - mark
        mark = time.monotonic()
        counts = recent_counts(client, day)
        stages["query counts"] = time.monotonic() - mark
    mark = time.monotonic()
    fetched, not_on_index = bulk_fetched(pypi_index, counts, fetched_at=started)
    key = f"bulk-{day:%Y%m%d}"
    store = fetch_store(context)
    store.write(key, fetched, context.run.run_id)
    stages["join and store"] = time.monotonic() - mark
    mark = time.monotonic()
    check = _cross_check(context, fetched, day, clickhouse, pypistats)
    stages["cross-check"] = time.monotonic() - mark
    valid = int((fetched["status"] == STATUS_VALID).sum())
    context.log.info(
        f"{len(fetched):,} projects counted for {day} ({valid:,} with downloads); {not_on_index:,} ClickHouse projects not on "
        f"the index left out; cross-check: {check.sentence()}"
    )
    return dg.MaterializeResult(
        metadata={
            "day": str(day),
            "projects": len(fetched),
            "valid": valid,
            "empty": len(fetched) - valid,
            "clickhouse_projects_not_on_index": not_on_index,
            "stored_as_chunk": key,
            "cross_check": check.sentence(),
            **{f"seconds: {stage}": round(seconds, 2) for stage, seconds in stages.items()},
            **_row_count(fetched),
            "preview": _preview(fetched),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="agrees_with_pypistats", passed=check.passed, severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "sampled": check.sampled,
                    "compared": check.compared,
                    "exact_share": float(check.exact_share) if check.compared else 0.0,
                    "median_relative_difference": float(check.median_relative_difference) if check.compared else 0.0,
                    "not_answered": check.failed,
                    "differences": dg.MetadataValue.json(dict(check.differences)),
                },
            )
        ],
    )


def _cross_check(context, fetched: pd.DataFrame, day: dt.date, clickhouse: ClickHouseSource, pypistats: PypistatsApi) -> CrossCheck:
    """Ask pypistats (through leased egresses, paced as chunk runs are) for a sample; never fails the run."""
    sample = sample_across_popularity(fetched, clickhouse.cross_check_sample, seed=day.toordinal())
    if not sample:
        return CrossCheck(0, 0, 0, float("nan"), {}, 0)
    keeper = Keeper(LeaseTable.of_instance(context.instance), holder_name(context.run.run_id))
    egresses = EgressLeases(keeper, [e.label for e in pypistats.proxy_pool.egresses()], clear_dead=lambda: live_leases(context.instance, EGRESS))
    try:
        client = pypistats.client(gate=egresses)
        egresses.resting = client.resting
        try:
            result = fetch_many(client, pypistats.url, sample, stop=stop_requested)
        except (HttpError, FetchStopped) as exc:
            context.log.warning(f"cross-check: pypistats did not answer ({type(exc).__name__}: {exc})")
            return CrossCheck(len(sample), 0, 0, float("nan"), {}, len(sample))
    finally:
        egresses.close()
        keeper.close()
    answers = [RecentCounts(**row) for row in result.fetched.to_dict("records")] if len(result.fetched) else []
    return cross_check(fetched, answers, len(sample), len(result.failed))


#: Days per run of a history backfill, and so per commit.
HISTORY_BATCH_DAYS = 31
# Dagster marks backfill policies beta; the warning would greet every user at every load.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


@dg.asset(
    group_name=GROUP,
    kinds={"parquet", "huggingface"},
    partitions_def=download_days,
    # A backfill over a range runs one run per batch of days and commits each batch once.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=HISTORY_BATCH_DAYS),
)
def download_history(context: dg.AssetExecutionContext, clickhouse: ClickHouseSource, dataset_repo: DatasetRepoResource) -> dg.MaterializeResult:
    """Downloads per project per day, without mirrors, as `history/YYYY-MM-DD.parquet` (date, name,
    downloads) in the dataset repo, one commit per batch of 31 days. With COUNTS_SOURCE=clickhouse
    each day is complete (one query per batch); with pypistats it holds what the dataset saw: the
    `last_day` of each project fetched while pypistats counted that day, merged into the day's file."""
    window = context.partition_time_window
    days = [d.date() for d in pd.date_range(window.start, window.end, freq="D", inclusive="left")]
    repo = dataset_repo.repo()
    commits, changed = [], 0
    # A long range is cut into batches: one query and one commit each, never one commit per day.
    for batch in [days[i : i + HISTORY_BATCH_DAYS] for i in range(0, len(days), HISTORY_BATCH_DAYS)]:
        with failing_clearly():
            outcome = publish_files(
                repo, _history_builder(repo, batch, clickhouse),
                message=f"History {batch[0]} .. {batch[-1]} ({len(batch)} days, {clickhouse.counts_source})",
            )
        context.log.info(
            f"history {batch[0]} .. {batch[-1]}: "
            + (f"committed {len(outcome.changed_files)} files" if outcome.committed else "already published, nothing committed")
        )
        if outcome.committed:
            commits.append(outcome.commit)
            changed += len(outcome.changed_files)
    return dg.MaterializeResult(
        metadata={
            "first_day": str(days[0]),
            "last_day": str(days[-1]),
            "days": len(days),
            "source": clickhouse.counts_source,
            "committed": bool(commits),
            "commits": len(commits),
            "files_changed": changed,
            "last_commit": commits[-1] if commits else "none",
        }
    )


def _history_builder(repo, days: list, clickhouse: ClickHouseSource):
    """What `publish_files` commits for `days`: from ClickHouse (complete; D must be loaded), or
    from the published dataset merged into the files already there (pypistats: partial)."""
    if clickhouse.enabled:
        client = clickhouse.client()
        check_day_loaded(daily_totals(client, days[-1] - dt.timedelta(days=1), days[-1]), days[-1])
        history = daily_history(client, days[0], days[-1])
        return lambda head, present: history_files(history, days)

    def build(head, present):
        existing = read_existing_dataset(repo)
        frames = []
        for day in days:
            old = read_history_file(repo.read_file(history_path(day), head)) if head and history_path(day) in present else None
            frames.append(merge_history(old, history_from_dataset(existing.frame, day, counts_day_of)))
        return history_files(pd.concat(frames, ignore_index=True), days)

    return build


def _publication_checks(publication: Publication) -> list[dg.AssetCheckResult]:
    """The checks on the dataset about to be published, as the UI shows them. Each blocks the publish."""
    results = [
        dg.AssetCheckResult(
            asset_key=MERGED, check_name=check.name, passed=check.passed, severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "rows_violating": check.violations,
                "rows_carried_over_violating": check.carried,
                "examples": dg.MetadataValue.json(list(check.examples)),
            },
        )
        for check in publication.checks
    ]
    results.append(
        dg.AssetCheckResult(
            asset_key=MERGED, check_name="publish_guards", severity=dg.AssetCheckSeverity.ERROR,
            passed=all(figure.passed for figure in publication.figures),
            metadata={figure.name: dg.MetadataValue.text(figure.describe()) for figure in publication.figures},
        )
    )
    return results


MERGED = dg.AssetKey("merged_dataset")
PUBLISH_CHECKS = [dg.AssetCheckSpec(name, asset=MERGED, description=text) for name, text in CHECK_DESCRIPTIONS.items()]


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "merged_dataset", group_name=GROUP, deps=["pypi_index", recent_stats, bulk_counts], kinds={"pandas", "parquet"},
            description="The new dataset: one row per project on the index, sorted by name, the newest fetched counts "
            "of every stored recent_stats chunk applied over the rows of the repo head it is published on.",
        ),
        dg.AssetSpec("charts", group_name=GROUP, deps=["merged_dataset"], kinds={"matplotlib"}, description="download_distribution.png and top_packages.png, rendered from merged_dataset."),
        dg.AssetSpec(
            "hf_dataset_card", group_name=GROUP, deps=["merged_dataset", "charts"], kinds={"huggingface"},
            # The daily cycle publishes at least once a day (02:00 UTC plan, then the chunks).
            freshness_policy=dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=50), warn_window=dt.timedelta(hours=26)),
            description="The dataset card (README.md), published with dataset.parquet and the charts in one commit on top of the head they were built on.",
        ),
    ],
    ins={"pypi_index": dg.AssetIn("pypi_index")},
    check_specs=PUBLISH_CHECKS,
    name="publish",
)
def publish(
    context: dg.AssetExecutionContext,
    config: PublishConfig,
    pypi_index: pd.DataFrame,
    dataset_repo: DatasetRepoResource,
    clickhouse: ClickHouseSource,
):
    """One consistent snapshot: read the repo head, merge every stored chunk onto it, check and guard
    the result, render card and charts from it and commit with that head as parent (again on a
    conflict). A failed check or guard refuses the publish and leaves the repo as it was."""
    repo = dataset_repo.repo()
    store = fetch_store(context)
    chunks = store.read_all()
    chunks_merged, fetched = len(chunks), newest_fetches(chunks.values())
    del chunks  # at full scale every stored row twice would be a few hundred MB held for nothing
    bulk = latest_metadata(context.instance, "bulk_counts")[0] if clickhouse.enabled else {}
    refresh_status = _bulk_refresh_status(bulk) if clickhouse.enabled else _refresh_status(context)
    trend = _trend(context, clickhouse)

    def render_files(publication: Publication) -> dict[str, bytes]:
        images = render_charts(publication.frame, trend=trend)
        card = render_dataset_card(
            publication.frame, repo_id=dataset_repo.repo_id, chart_files=tuple(images), refresh_status=refresh_status,
            counts_source=clickhouse.counts_source, history=_history_info(publication.existing.files, clickhouse),
            cross_check=bulk["cross_check"].value if "cross_check" in bulk else None,
        )
        parquet = dataset_to_parquet(publication.frame, baseline=publication.baseline.to_dict())
        return {DATASET_FILE: parquet, "README.md": card.encode(), **images}

    with failing_clearly():
        publication = publish_snapshot(
            repo,
            projects=pypi_index,
            fetched=fetched,
            guards=config.guards(),
            render_files=render_files,
            message=lambda p: _commit_message(context.run.tags, _status_counts(p.frame)),
        )
    yield from _publication_checks(publication)
    if publication.refusal:
        with failing_clearly():
            raise PublishRefused(publication.refusal)

    outcome, frame, stats = publication.outcome, publication.frame, publication.stats
    if outcome.committed:
        context.log.info(f"published {', '.join(outcome.changed_files)} to {repo.description}: {outcome.commit}")
    else:
        context.log.info(f"{repo.description} already holds this dataset; nothing committed")
    if stats.superseded:
        context.log.warning(f"{stats.superseded} fetched rows were older than the published rows and were not applied")
    # Only now, with the rows safely in the repo, may their fetched chunks go.
    removed = store.remove_published(
        frame, normalize_names(frame["name"]), keep_fetched_since=counts_day_start(time.time()), busy=leased_chunks(context.instance)
    )
    counts = _status_counts(frame)
    yield dg.MaterializeResult(
        asset_key="merged_dataset",
        metadata={
            **counts,
            "published_on_revision": publication.existing.revision or "none (new repo)",
            "publish_attempts": publication.attempts,
            "chunks_merged": chunks_merged,
            "rows_updated": stats.updated,
            "projects_added": stats.added,
            "projects_removed": stats.removed,
            "fetched_not_on_index": stats.fetched_not_on_index,
            "fetches_superseded": stats.superseded,
            "untrusted_times_replaced": stats.untrusted_times_replaced,
            **{f"guard: {figure.name}": dg.MetadataValue.text(figure.describe()) for figure in publication.figures},
            **_row_count(frame, dataset_schema=True),
            "preview": _preview(frame),
        },
    )
    images = {name: data for name, data in publication.files.items() if name.endswith(".png")}
    yield dg.MaterializeResult(
        asset_key="charts",
        metadata={
            # Small inline copies: the UI shows them in the event; the full size is linked on the card.
            "charts": dg.MetadataValue.md(chart_thumbnails_markdown(images)),
            **{f"{name} bytes": len(data) for name, data in images.items()},
        },
    )
    commit = outcome.commit if outcome.committed else _last_commit(context.instance)
    commit_meta = dg.MetadataValue.url(commit) if commit and commit.startswith("http") else (commit or "none")
    links = "\n".join(f"- [{name}]({repo.file_link(name)})" for name in publication.files)
    yield dg.MaterializeResult(
        asset_key="hf_dataset_card",
        metadata={
            **counts,
            "committed": outcome.committed,
            "last_commit": commit_meta,
            "changed_files": dg.MetadataValue.json(list(outcome.changed_files)),
            "fetched_chunks_cleared": len(removed),
            "destination": repo.description,
            "dataset_parquet_bytes": len(publication.files[DATASET_FILE]),
            "files": dg.MetadataValue.md(links),
            "card": dg.MetadataValue.md(card_without_front_matter(publication.files["README.md"].decode())),
        },
    )


def _bulk_refresh_status(bulk: dict) -> str:
    if "day" not in bulk:
        return "complete; every project on the index counted from ClickPy's download table."
    return f"complete; every project on the index counted from ClickPy's download table for the 30 days up to {bulk['day'].value}."


def _trend(context: dg.AssetExecutionContext, clickhouse: ClickHouseSource) -> Optional[pd.DataFrame]:
    """The trend chart's data: with ClickHouse, the top projects' last 90 days (one small query);
    with pypistats there is no complete history to draw it from."""
    if not clickhouse.enabled:
        return None
    try:
        return top_trend(clickhouse.client(), last_complete_day(time.time()))
    except ClickHouseError as exc:  # a chart is not worth failing the publish for: say so, go on
        context.log.warning(f"no trend chart this time: {exc}")
        return None


def _history_info(files, clickhouse: ClickHouseSource) -> Optional[HistoryInfo]:
    days = history_days(files)
    if not days:
        return None
    return HistoryInfo(first_day=days[0], last_day=days[-1], days=len(days), complete=clickhouse.enabled)


def _last_commit(instance: dg.DagsterInstance) -> Optional[str]:
    """The commit of the last publish that changed something (a no-op publish keeps showing it)."""
    value = latest_metadata(instance, "hf_dataset_card")[0].get("last_commit")
    return str(value.value) if value is not None and value.value != "none" else None


def _refresh_status(context: dg.AssetExecutionContext) -> str:
    """Whether this publish completes the current plan, from what the instance knows of its chunks."""
    plan = current_plan(context.instance)
    if plan is None:
        return describe_refresh(context.run.tags.get(PUBLISH_TAG), planned=0, done=0, fully_answered=0)
    _, keys, _ = plan
    latest: dict[str, dict] = {}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("recent_stats"), asset_partitions=keys), limit=max(1, 10 * len(keys))
    ).records
    for record in sorted(records, key=lambda r: r.timestamp):
        latest[record.partition_key] = record.asset_materialization.metadata
    fully = sum(1 for meta in latest.values() if "failed" in meta and meta["failed"].value == 0)
    return describe_refresh(context.run.tags.get(PUBLISH_TAG), planned=len(keys), done=len(latest), fully_answered=fully)


def _commit_message(tags: dict, counts: dict) -> str:
    """Says which publish of which plan it was, so the Hub's history reads as the cycle ran."""
    kind = tags.get(PUBLISH_TAG)
    prefix = f"{kind.capitalize()} publish of plan {tags.get(PLAN_TAG)}" if kind else "Update dataset"
    return f"{prefix}: {counts['rows']:,} packages, {counts['valid']:,} with downloads, {counts['empty']:,} empty"
