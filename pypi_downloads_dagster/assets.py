"""The lineage as Dagster assets: index -> existing dataset -> stale plan -> chunked pypistats
fetches -> merged dataset -> charts -> dataset card, published in one commit. Each asset is a thin
wrapper: the work is in the plain modules, the asset reports what happened."""


import contextlib
import datetime as dt
import time
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from pypi_downloads_dagster.card import markdown_table, render_dataset_card
from pypi_downloads_dagster.charts import render_charts
from pypi_downloads_dagster.cycle import CHECKPOINT, FINAL, PLAN_TAG, PUBLISH_TAG
from pypi_downloads_dagster.dataset import merge_dataset, newest_fetches, plan_stale
from pypi_downloads_dagster.fetch_store import FetchStore
from pypi_downloads_dagster.http import HttpError
from pypi_downloads_dagster.hub import (
    DatasetReadError,
    ExistingDataset,
    PublishConflict,
    PublishRefused,
    publish_dataset,
    read_existing_dataset,
)
from pypi_downloads_dagster.pypi_index import IndexFormatError
from pypi_downloads_dagster.partitions import PYPISTATS_POOL, current_plan, recent_stats_chunks, rotate_chunk_keys
from pypi_downloads_dagster.pypistats import counts_day_start, fetch_many
from pypi_downloads_dagster.resources import DatasetRepoResource, PypiIndexSource, PypistatsApi
from pypi_downloads_dagster.schema import DATASET_FILE, STATUS_EMPTY, STATUS_VALID, dataset_to_parquet, normalize_names

GROUP = "pypi_downloads"
PREVIEW_ROWS = 10


class IndexConfig(dg.Config):
    min_projects: int = Field(default=1, description="Fail when the index lists fewer valid projects than this.")


class PlanConfig(dg.Config):
    stale_after_days: float = Field(default=30, description="Refetch rows older than this many days.")
    max_packages: Optional[int] = Field(default=None, ge=0, description="Plan at most this many packages per cycle.")
    chunk_size: int = Field(default=1000, ge=1, description="Packages per recent_stats partition.")


class PublishConfig(dg.Config):
    max_row_loss_share: float = Field(
        default=0.05, description="Refuse to publish when the dataset would lose more than this share of its rows."
    )


#: Failures with a message that says it all: shown as such in the UI and by `sync`, no traceback hunt.
EXPECTED_FAILURES = (HttpError, IndexFormatError, DatasetReadError, PublishRefused, PublishConflict, PermissionError)


@contextlib.contextmanager
def failing_clearly():
    try:
        yield
    except EXPECTED_FAILURES as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}") from None


def fetch_store(context) -> FetchStore:
    """Fetched chunks awaiting publication, kept in the Dagster instance's storage folder."""
    return FetchStore(Path(context.instance.storage_directory()) / "recent_stats_chunks")


def pacing_file(context) -> Path:
    """The per-egress request schedule every run on this instance shares."""
    return Path(context.instance.storage_directory()) / "pypistats_pacing.json"


def _preview(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(frame.head(PREVIEW_ROWS)) if len(frame) else "(no rows)")


def _status_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {
        "rows": len(frame),
        "valid": int((frame["status"] == STATUS_VALID).sum()),
        "empty": int((frame["status"] == STATUS_EMPTY).sum()),
        "never_fetched": int(frame["updated_at"].isna().sum()),
    }


@dg.asset(group_name=GROUP)
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
            "preview": _preview(index.projects),
        },
    )


@dg.asset(group_name=GROUP)
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
            "preview": _preview(existing.frame),
        },
    )


@dg.asset(group_name=GROUP)
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
    started = dt.datetime.fromtimestamp(time.time(), dt.timezone.utc)
    plan_id = started.strftime("%Y%m%dT%H%M%S")
    pending = fetch_store(context).read_all()
    known, _ = merge_dataset(existing_dataset.frame, pypi_index, newest_fetches(pending.values()))
    stale = plan_stale(
        pypi_index,
        known,
        now=started.timestamp(),
        plan_id=plan_id,
        stale_after_days=config.stale_after_days,
        chunk_size=config.chunk_size,
    )
    # Unless told otherwise, plan one day of work: tomorrow's plan takes over what is left.
    cap = config.max_packages if config.max_packages is not None else pypistats.daily_capacity()
    plan = stale.head(cap)
    keys = list(dict.fromkeys(plan["chunk"]))
    removed = rotate_chunk_keys(context.instance, keys)
    egresses = len(pypistats.proxy_pool.egresses())
    context.instance.event_log_storage.set_concurrency_slots(PYPISTATS_POOL, egresses)
    context.log.info(
        f"plan {plan_id}: {len(plan)} of {len(stale)} stale packages in {len(keys)} chunks; "
        f"{len(removed)} older chunk keys removed; pool {PYPISTATS_POOL!r} set to {egresses} slot(s)"
    )
    return dg.Output(
        plan,
        metadata={
            "plan_id": plan_id,
            "packages": len(plan),
            "stale_packages": len(stale),
            "cap": cap,
            "never_fetched": int(plan["updated_at"].isna().sum()),
            "chunks": len(keys),
            "older_chunk_keys_removed": len(removed),
            "unpublished_chunks_counted_as_fetched": len(pending),
            "chunk_keys": dg.MetadataValue.json(keys),
            "preview": _preview(plan),
        },
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=recent_stats_chunks,
    pool=PYPISTATS_POOL,
    check_specs=[dg.AssetCheckSpec("every_package_answered", asset="recent_stats", description="No package failed after retries.")],
)
def recent_stats(
    context: dg.AssetExecutionContext, stale_packages: pd.DataFrame, pypistats: PypistatsApi
) -> dg.MaterializeResult:
    """Recent download counts (last day/week/month) from pypistats for one chunk of the plan,
    requested by normalized name. 404 records 'empty'; packages that still fail after retries are
    left out (their rows stay as they were) and reported by the check. Each chunk is stored on its
    own until a publish has taken it in."""
    key = context.partition_key
    planned = stale_packages.loc[stale_packages["chunk"] == key, "normalized"].tolist()
    if not planned:
        raise dg.Failure(
            f"chunk {key} is not part of the current plan (plan chunks start with "
            f"{stale_packages['chunk'].iloc[0][:15] if len(stale_packages) else 'nothing: the plan is empty'}); "
            "materialize stale_packages to plan again"
        )
    store = fetch_store(context)
    # A re-run the same day asks only for what it has not got: the rest cannot have changed.
    already = store.fetched_since(key, counts_day_start(time.time()))
    names = [name for name in planned if name not in already]
    client = pypistats.client(shared_pacing_file=pacing_file(context))
    context.log.info(
        f"chunk {key}: {len(names)} packages to fetch ({len(already)} already fetched today) over "
        f"{len(client.egresses)} egress(es), one request per {client.pacing.interval:.2f}s each"
    )
    started = time.monotonic()
    last_report = [started]

    def progress(done: int, total: int, failed: int) -> None:
        now = time.monotonic()
        if done == total or now - last_report[0] >= 30:
            last_report[0] = now
            context.log.info(f"chunk {key}: {done}/{total} packages answered, {failed} failed so far")

    with store.journal(key) as record:
        result = fetch_many(client, pypistats.url, names, on_progress=progress, on_result=record)
    seconds = time.monotonic() - started
    failed_sample = dict(list(result.failed.items())[:20])
    if len(result.fetched) == 0 and result.failed and not already:
        raise dg.Failure(
            f"chunk {key}: all {len(names)} packages failed, e.g. {next(iter(result.failed.values()))}",
            metadata={"failed": len(result.failed), "failures": dg.MetadataValue.json(failed_sample)},
        )
    stored = store.write(key, result.fetched)
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


@dg.asset(group_name=GROUP, deps=[recent_stats])
def merged_dataset(
    context: dg.AssetExecutionContext, pypi_index: pd.DataFrame, existing_dataset: ExistingDataset
) -> dg.Output[pd.DataFrame]:
    """The new dataset: one row per project on the current index, sorted by name, with the newest
    fetched counts of every stored `recent_stats` chunk applied over the published rows."""
    recent_stats = fetch_store(context).read_all()
    fetched = newest_fetches(recent_stats.values())
    merged, stats = merge_dataset(existing_dataset.frame, pypi_index, fetched)
    context.log.info(
        f"merged {len(recent_stats)} chunks: {stats.updated} rows updated, {stats.added} added, {stats.removed} removed"
    )
    return dg.Output(
        merged,
        metadata={
            **_status_counts(merged),
            "chunks_merged": len(recent_stats),
            "rows_updated": stats.updated,
            "projects_added": stats.added,
            "projects_removed": stats.removed,
            "fetched_not_on_index": stats.fetched_not_on_index,
            "preview": _preview(merged),
        },
    )


@dg.asset(group_name=GROUP)
def charts(merged_dataset: pd.DataFrame) -> dg.Output[dict[str, bytes]]:
    """The dataset's charts as PNG bytes: download_distribution.png and top_packages.png. The
    publish links them where they were published (not embedded here: every checkpoint would add
    a few hundred kB to the event log)."""
    images = render_charts(merged_dataset)
    return dg.Output(images, metadata={f"{name} bytes": len(data) for name, data in images.items()})


def _refresh_status(context: dg.AssetExecutionContext) -> str:
    """Whether this publish completes the current plan or is a checkpoint of it. Only the state, no
    plan id or time, so publishing the same data again gives the same card."""
    kind = context.run.tags.get(PUBLISH_TAG)
    plan = current_plan(context.instance)
    if kind != FINAL and plan is not None:
        _, keys, _ = plan
        done = len(set(keys) & context.instance.get_materialized_partitions(recent_stats.key))
        if kind == CHECKPOINT or done < len(keys):
            return f"in progress; this version is a checkpoint with {done} of {len(keys)} planned chunks fetched."
    return "complete; every stale project planned for this refresh was fetched or is retried in the next one."


def _commit_message(tags: dict, counts: dict) -> str:
    """Says which publish of which plan it was, so the Hub's history reads as the cycle ran."""
    kind = tags.get(PUBLISH_TAG)
    prefix = f"{kind.capitalize()} publish of plan {tags.get(PLAN_TAG)}" if kind else "Update dataset"
    return f"{prefix}: {counts['rows']:,} packages, {counts['valid']:,} with downloads, {counts['empty']:,} empty"


@dg.asset(group_name=GROUP)
def hf_dataset_card(
    context: dg.AssetExecutionContext,
    config: PublishConfig,
    merged_dataset: pd.DataFrame,
    charts: dict[str, bytes],
    existing_dataset: ExistingDataset,
    dataset_repo: DatasetRepoResource,
) -> dg.Output[str]:
    """The dataset card (README.md), published with dataset.parquet and the charts in one commit
    on top of the revision the existing dataset was read at. Refuses a publish that would lose
    more than `max_row_loss_share` of the rows; commits nothing when no file changed."""
    card = render_dataset_card(
        merged_dataset, repo_id=dataset_repo.repo_id, chart_files=tuple(charts), refresh_status=_refresh_status(context)
    )
    parquet = dataset_to_parquet(merged_dataset)
    files = {DATASET_FILE: parquet, "README.md": card.encode(), **charts}
    counts = _status_counts(merged_dataset)
    repo = dataset_repo.repo()
    with failing_clearly():
        outcome = publish_dataset(
            repo,
            files,
            existing=existing_dataset,
            new_rows=len(merged_dataset),
            max_row_loss_share=config.max_row_loss_share,
            message=_commit_message(context.run.tags, counts),
        )
    if outcome.committed:
        context.log.info(f"published {', '.join(outcome.changed_files)} to {repo.description}: {outcome.commit}")
    else:
        context.log.info(f"{repo.description} already holds this dataset; nothing committed")
    # Only now, with the rows safely in the repo, may their fetched chunks go.
    removed = fetch_store(context).remove_published(
        merged_dataset, normalize_names(merged_dataset["name"]), keep_fetched_since=counts_day_start(time.time())
    )
    commit_meta = dg.MetadataValue.url(outcome.commit) if outcome.commit and outcome.commit.startswith("http") else (outcome.commit or "none")
    links = "\n".join(f"- [{name}]({repo.file_link(name)})" for name in files)
    return dg.Output(
        card,
        metadata={
            **counts,
            "committed": outcome.committed,
            "commit": commit_meta,
            "changed_files": dg.MetadataValue.json(list(outcome.changed_files)),
            "fetched_chunks_cleared": len(removed),
            "destination": repo.description,
            "dataset_parquet_bytes": len(parquet),
            "files": dg.MetadataValue.md(links),
            "card": dg.MetadataValue.md(card),
        },
    )
