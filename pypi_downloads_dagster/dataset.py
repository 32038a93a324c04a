"""Pure dataset logic: which projects are stale, how they are split into chunks, and how fetched
counts are merged into the dataset. Vectorised pandas throughout, so 900k rows stay fast."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Optional

import pandas as pd

from pypi_downloads_dagster.schema import COLUMNS, COUNT_COLUMNS, conform, normalize_names

DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class MergeStats:
    rows: int
    added: int  # new on the index, not in the old dataset
    removed: int  # in the old dataset, no longer on the index
    updated: int  # rows that took newer fetched counts
    fetched_not_on_index: int  # fetched rows for projects that left the index meanwhile


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
    fetched = pd.concat(frames, ignore_index=True)
    return fetched.sort_values("updated_at", kind="stable").drop_duplicates("normalized", keep="last")


def merge_dataset(existing: pd.DataFrame, projects: pd.DataFrame, fetched: pd.DataFrame) -> tuple[pd.DataFrame, MergeStats]:
    """The new dataset: one row per project on the index (`projects`: name, normalized, url),
    carrying the existing row's counts unless `fetched` has a newer fetch for it. Sorted by name.

    Merging is idempotent: fetches not newer than a row's `updated_at` change nothing, so any
    superset of already merged chunks may be merged again.
    """
    old = with_normalized(existing)
    merged = projects[["name", "normalized", "url"]].merge(
        old.drop(columns=["name", "url"]), on="normalized", how="left", validate="one_to_one", indicator=True
    )
    matched_old = int((merged.pop("_merge") == "both").sum())
    updated = 0
    fetched_on_index = 0
    if "updated_at" in fetched.columns and len(fetched):
        new = fetched.set_index("normalized").reindex(merged["normalized"])
        has_fetch = new["updated_at"].notna().to_numpy()
        fetched_on_index = int(has_fetch.sum())
        newer = has_fetch & ~(new["updated_at"].to_numpy() <= merged["updated_at"].to_numpy())
        for column in (*COUNT_COLUMNS, "status", "updated_at"):
            merged.loc[newer, column] = new[column].to_numpy()[newer]
        updated = int(newer.sum())
    stats = MergeStats(
        rows=len(merged),
        added=len(merged) - matched_old,
        removed=len(old) - matched_old,
        updated=updated,
        fetched_not_on_index=len(fetched) - fetched_on_index,
    )
    result = conform(merged[list(COLUMNS)]).sort_values("name", kind="stable").reset_index(drop=True)
    return result, stats


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
) -> pd.DataFrame:
    """The projects to refresh, oldest first, split into chunks.

    A project is stale when the dataset has never fetched it or fetched it more than
    `stale_after_days` ago. Never-fetched projects come first, then by age; ties by normalized name,
    so the same inputs always give the same chunks. Returns columns chunk, normalized, name,
    updated_at (the row's previous fetch time).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if max_packages is not None and max_packages < 0:
        raise ValueError(f"max_packages must be 0 or more, got {max_packages}")
    known = with_normalized(dataset)[["normalized", "updated_at"]]
    frame = projects[["normalized", "name"]].merge(known, on="normalized", how="left")
    cutoff = now - stale_after_days * DAY
    stale = frame[frame["updated_at"].isna() | (frame["updated_at"] < cutoff)]
    stale = stale.sort_values(["updated_at", "normalized"], na_position="first", kind="stable")
    if max_packages is not None:
        stale = stale.head(max_packages)
    stale = stale.reset_index(drop=True)
    numbers = stale.index // chunk_size
    stale.insert(0, "chunk", [chunk_key(plan_id, n) for n in numbers] if len(stale) else pd.Series([], dtype=object))
    return stale
