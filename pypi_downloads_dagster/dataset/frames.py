"""Pure dataset logic: which projects are stale, how they are split into chunks, and how fetched
counts are merged into the dataset. Vectorised pandas throughout, so 900k rows stay fast."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Iterable
from typing import Optional

import numpy as np
import pandas as pd

from pypi_downloads_dagster.dataset.schema import (
    COLUMNS,
    COUNT_COLUMNS,
    EARLIEST_UPDATED_AT,
    MAX_CLOCK_SKEW_SECONDS,
    STATUS_VALID,
    conform,
    normalize_names,
)

DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class MergeStats:
    rows: int
    added: int  # new on the index, not in the old dataset
    removed: int  # in the old dataset, no longer on the index
    updated: int  # rows that took newer fetched counts
    fetched_not_on_index: int  # fetched rows for projects that left the index meanwhile
    superseded: int = 0  # fetches not applied: the published row was fetched later
    untrusted_times_replaced: int = 0  # rows whose updated_at was in the future or before pypistats existed


def trusted_times(updated_at: np.ndarray, now: float) -> np.ndarray:
    """Which fetch times can be believed: not before pypistats existed and not ahead of `now`
    (beyond clock skew). Others come from a broken clock; such rows count as never fetched when
    planning, and any fetch replaces them, or they would never be stale again."""
    with np.errstate(invalid="ignore"):
        return (updated_at >= EARLIEST_UPDATED_AT) & (updated_at <= now + MAX_CLOCK_SKEW_SECONDS)


def with_normalized(dataset: pd.DataFrame) -> pd.DataFrame:
    """The dataset with a `normalized` column, one row per normalized name (the newest fetch wins
    where an old file held two spellings of one project)."""
    frame = dataset.assign(normalized=normalize_names(dataset["name"]))
    if frame["normalized"].duplicated().any():
        frame = frame.sort_values("updated_at", na_position="first", kind="stable").drop_duplicates("normalized", keep="last")
    return frame


def newest_fetches(chunks: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """All fetched rows (pypistats.FETCHED_COLUMNS) with one row per project: its newest fetch."""
    frames = [chunk for chunk in chunks if len(chunk)]
    if not frames:
        return pd.DataFrame({"normalized": pd.Series([], dtype=object)})
    if len(frames) == 1 and frames[0]["normalized"].is_unique:
        return frames[0]  # already one row per project (a bulk fetch: 930,000 rows not copied twice)
    fetched = pd.concat(frames, ignore_index=True)
    return fetched.sort_values("updated_at", kind="stable").drop_duplicates("normalized", keep="last")


def merge_dataset(
    existing: pd.DataFrame, projects: pd.DataFrame, fetched: pd.DataFrame, *, now: Optional[float] = None
) -> tuple[pd.DataFrame, MergeStats]:
    """The new dataset: one row per project on the index (`projects`: name, normalized, url),
    carrying the existing row's counts unless `fetched` has a newer fetch for it. Sorted by name.

    Merging is idempotent: fetches not newer than a row's `updated_at` change nothing, so any
    superset of already merged chunks may be merged again. A row whose `updated_at` cannot be
    true (see `trusted_times`, judged at `now`, default the clock) takes any fetch.
    """
    now = time.time() if now is None else now
    old = with_normalized(existing)
    merged = projects[["name", "normalized", "url"]].merge(
        old.drop(columns=["name", "url"]), on="normalized", how="left", validate="one_to_one", indicator=True
    )
    matched_old = int((merged.pop("_merge") == "both").sum())
    updated = superseded = untrusted = 0
    fetched_on_index = 0
    if "updated_at" in fetched.columns and len(fetched):
        new = fetched.set_index("normalized").reindex(merged["normalized"])
        has_fetch = new["updated_at"].notna().to_numpy()
        fetched_on_index = int(has_fetch.sum())
        current = merged["updated_at"].to_numpy(dtype="float64", na_value=np.nan)
        replaceable = ~trusted_times(current, now)
        newer = has_fetch & (replaceable | ~(new["updated_at"].to_numpy() <= current))
        for column in (*COUNT_COLUMNS, "status", "updated_at"):
            merged.loc[newer, column] = new[column].to_numpy()[newer]
        updated = int(newer.sum())
        # Fetches older than the published row (another machine fetched it later): counted, not silent.
        superseded = int((has_fetch & ~newer & (new["updated_at"].to_numpy() < current)).sum())
        untrusted = int((newer & replaceable & ~np.isnan(current)).sum())
    stats = MergeStats(
        rows=len(merged),
        added=len(merged) - matched_old,
        removed=len(old) - matched_old,
        updated=updated,
        fetched_not_on_index=len(fetched) - fetched_on_index,
        superseded=superseded,
        untrusted_times_replaced=untrusted,
    )
    result = conform(merged[list(COLUMNS)]).sort_values("name", kind="stable").reset_index(drop=True)
    return result, stats


def choose_canary(dataset: pd.DataFrame) -> Optional[str]:
    """The normalized name of the most downloaded `valid` project: one the stats API must know.
    None when no row has counts yet."""
    valid = dataset[dataset["status"] == STATUS_VALID]
    if not len(valid):
        return None
    top = valid.sort_values(["last_month", "name"], ascending=[False, True], kind="stable").iloc[0]
    return normalize_names(pd.Series([top["name"]])).iloc[0]


def chunk_key(plan_id: str, number: int) -> str:
    """Partition key of chunk `number` of plan `plan_id` (no commas: Dagster keys are comma-split)."""
    return f"{plan_id}-{number:05d}"


def plan_stale(
    projects: pd.DataFrame,
    dataset: pd.DataFrame,
    *,
    now: float,
    plan_id: str,
    stale_after_days: float = 30,
    max_packages: Optional[int] = None,
    chunk_size: int = 1000,
    held: Collection[str] = (),
) -> pd.DataFrame:
    """The projects to refresh, oldest first, split into chunks.

    A project is stale when the dataset has never fetched it or fetched it more than
    `stale_after_days` ago. Never-fetched projects come first, then by age; ties by normalized name,
    so the same inputs always give the same chunks. Projects in `held` (normalized names: chunks of
    earlier plans that runs are fetching or will fetch) are left to those runs. Returns columns
    chunk, normalized, name, updated_at (the row's previous fetch time).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if max_packages is not None and max_packages < 0:
        raise ValueError(f"max_packages must be 0 or more, got {max_packages}")
    known = with_normalized(dataset)[["normalized", "updated_at"]]
    frame = projects[["normalized", "name"]].merge(known, on="normalized", how="left")
    cutoff = now - stale_after_days * DAY
    updated_at = frame["updated_at"].to_numpy(dtype="float64", na_value=np.nan)
    # Untrusted times (future, before pypistats) plan like never fetched: first, and always.
    frame.loc[~trusted_times(updated_at, now), "updated_at"] = np.nan
    is_stale = (frame["updated_at"].isna() | (frame["updated_at"] < cutoff)).to_numpy(copy=True)
    if len(held):
        is_stale &= pd.Index(sorted(set(held))).get_indexer(frame["normalized"]) < 0  # not isin: slow on Arrow strings
    stale = frame[is_stale]
    stale = stale.sort_values(["updated_at", "normalized"], na_position="first", kind="stable")
    if max_packages is not None:
        stale = stale.head(max_packages)
    stale = stale.reset_index(drop=True)
    numbers = stale.index // chunk_size
    stale.insert(0, "chunk", [chunk_key(plan_id, n) for n in numbers] if len(stale) else pd.Series([], dtype=object))
    return stale
