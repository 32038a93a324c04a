"""The bulk counts source (ClickPy's ClickHouse) as rows of the dataset, its cross-check against
pypistats, and the per-day download history files. Plain functions: the assets call them.

A bulk fetch is a fetch like any other: one row per project on the index, `valid` with the three
counts when ClickHouse has downloads for it in the 30 days, `empty` when it has none (what
pypistats answers with a 404), all with the time of the query. So the store, the merge and the
publish guards treat it exactly as they treat pypistats' answers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import math
from collections.abc import Iterable, Mapping
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pypi_downloads_dagster.dataset.schema import COUNT_COLUMNS, STATUS_EMPTY, STATUS_VALID, normalize_names

HISTORY_FOLDER = "history"
HISTORY_SCHEMA = pa.schema(
    [pa.field("date", pa.date32(), nullable=False), pa.field("name", pa.string(), nullable=False), pa.field("downloads", pa.int64(), nullable=False)]
)
#: A day whose total is below this share of the day before is taken as not loaded yet.
MIN_LOADED_SHARE = 0.5
#: Exact agreement with pypistats below this share fails the cross-check (a warning).
MIN_EXACT_SHARE = 0.9


class DayNotLoaded(RuntimeError):
    """ClickPy has not (fully) loaded the day asked for yet: try again later."""


def bulk_fetched(projects: pd.DataFrame, counts: pd.DataFrame, fetched_at: float) -> tuple[pd.DataFrame, int]:
    """Rows in the fetch store's shape (normalized, counts, status, updated_at) for every project
    of the index (`projects`: a `normalized` column), from `counts` (normalized, last_day,
    last_week, last_month: projects with downloads in the 30 days). Returns them and how many
    projects of `counts` are not on the index (left out)."""
    names = pd.Index(projects["normalized"].drop_duplicates())
    found = counts.set_index("normalized")[list(COUNT_COLUMNS)]
    on_index = found.index.isin(names)
    found = found[on_index]
    frame = pd.DataFrame({"normalized": names.to_numpy(dtype=object)})
    position = pd.Index(found.index).get_indexer(frame["normalized"])
    has = position >= 0
    for column in COUNT_COLUMNS:
        values = np.zeros(len(frame), dtype="int64")
        values[has] = found[column].to_numpy(dtype="int64")[position[has]]
        frame[column] = pd.arrays.IntegerArray(values, ~has)  # null where ClickHouse had no downloads
    frame["status"] = np.where(has, STATUS_VALID, STATUS_EMPTY).astype(object)
    frame["updated_at"] = float(fetched_at)
    return frame, int((~on_index).sum())


def check_day_loaded(totals: pd.DataFrame, day: dt.date) -> None:
    """Raise DayNotLoaded unless `totals` (date, downloads per day) shows `day` loaded: a total of
    at least MIN_LOADED_SHARE of the day before (a day loaded halfway would read as a drop)."""
    by_day = {(d if isinstance(d, dt.date) else pd.Timestamp(d).date()): int(v) for d, v in zip(totals["date"], totals["downloads"])}
    today, before = by_day.get(day, 0), by_day.get(day - dt.timedelta(days=1), 0)
    if today <= 0 or (before > 0 and today < MIN_LOADED_SHARE * before):
        raise DayNotLoaded(
            f"ClickPy has not loaded {day} yet ({today:,} downloads that day against {before:,} the day before); "
            "its data arrives during the next day: try again later"
        )


def sample_across_popularity(fetched: pd.DataFrame, n: int, seed: int) -> list[str]:
    """`n` projects for the cross-check, spread over popularity: the projects with counts are cut
    into `n - n // 10` bands of equal size by `last_month` and one is drawn from each; the rest are
    drawn from the `empty` ones. Deterministic for a seed."""
    if n <= 0 or not len(fetched):
        return []
    rng = np.random.default_rng(seed)
    valid = fetched[fetched["status"] == STATUS_VALID].sort_values(["last_month", "normalized"])
    empty = fetched[fetched["status"] == STATUS_EMPTY]["normalized"].to_numpy(dtype=object)
    bands = min(len(valid), max(1, n - n // 10)) if len(valid) else 0
    chosen = [str(rng.choice(band)) for band in np.array_split(valid["normalized"].to_numpy(dtype=object), bands)] if bands else []
    rest = min(len(empty), n - len(chosen))
    chosen += [str(name) for name in rng.choice(empty, size=rest, replace=False)] if rest > 0 else []
    return chosen


@dataclasses.dataclass(frozen=True)
class CrossCheck:
    """How the bulk counts of a sample agree with pypistats' answers for the same projects."""

    sampled: int
    compared: int  # answered by pypistats
    exact: int  # all three counts and the status equal
    median_relative_difference: float  # of last_month, over the compared projects (0 = equal)
    differences: Mapping[str, str]  # a few projects that differ: what each source says
    failed: int  # not answered by pypistats (after retries)

    @property
    def exact_share(self) -> float:
        return self.exact / self.compared if self.compared else math.nan

    @property
    def passed(self) -> bool:
        return self.compared > 0 and self.exact_share >= MIN_EXACT_SHARE

    def sentence(self) -> str:
        if not self.compared:
            return f"pypistats.org answered for none of the {self.sampled} sampled projects; no agreement measured."
        return (
            f"{self.exact} of {self.compared} sampled projects agree exactly with pypistats.org; median relative "
            f"difference of last_month {100 * self.median_relative_difference:.1f}%."
        )


def cross_check(bulk: pd.DataFrame, answers: Iterable, sampled: int, failed: int) -> CrossCheck:
    """Compare `answers` (pypistats RecentCounts) with the bulk rows (`bulk`: fetch-store shape)."""
    rows = bulk.set_index("normalized")
    exact, differences, relative = 0, {}, []
    compared = 0
    for answer in answers:
        if answer.normalized not in rows.index:
            continue
        compared += 1
        row = rows.loc[answer.normalized]
        ours = tuple(None if pd.isna(row[c]) else int(row[c]) for c in COUNT_COLUMNS)
        theirs = (answer.last_day, answer.last_week, answer.last_month)
        if row["status"] == answer.status and ours == theirs:
            exact += 1
        elif len(differences) < 10:
            differences[answer.normalized] = f"ClickHouse {row['status']} {ours}, pypistats {answer.status} {theirs}"
        a, b = ours[2] or 0, theirs[2] or 0
        relative.append(0.0 if a == b else abs(a - b) / max(a, b))
    median = float(np.median(relative)) if relative else math.nan
    return CrossCheck(sampled, compared, exact, median, differences, failed)


def history_files(history: pd.DataFrame, days: Iterable[dt.date]) -> dict[str, bytes]:
    """`history/YYYY-MM-DD.parquet` for each of `days` from `history` (date, name, downloads):
    one row per project with downloads that day, sorted by name; a day without rows gets an
    empty file (it was asked for and had none)."""
    frame = history.copy()
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    frame = frame[frame["downloads"] > 0]
    files = {}
    groups = {day: rows for day, rows in frame.groupby("date", sort=True)} if len(frame) else {}
    for day in days:
        rows = groups.get(day, frame.iloc[0:0]).sort_values("name", kind="stable")
        table = pa.Table.from_pandas(rows[["date", "name", "downloads"]], schema=HISTORY_SCHEMA, preserve_index=False)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        files[history_path(day)] = buffer.getvalue()
    return files


def history_path(day: dt.date) -> str:
    return f"{HISTORY_FOLDER}/{day:%Y-%m-%d}.parquet"


def read_history_file(data: bytes) -> pd.DataFrame:
    table = pq.read_table(io.BytesIO(data))
    return table.to_pandas(types_mapper={pa.date32(): None}.get).assign(date=lambda f: pd.to_datetime(f["date"]).dt.date)


def history_days(file_names: Iterable[str]) -> list[dt.date]:
    """The days of the history files among `file_names` (repo paths), sorted."""
    days = []
    for name in file_names:
        if name.startswith(f"{HISTORY_FOLDER}/") and name.endswith(".parquet"):
            try:
                days.append(dt.date.fromisoformat(name[len(HISTORY_FOLDER) + 1 : -len(".parquet")]))
            except ValueError:
                continue
    return sorted(days)


def history_from_dataset(frame: pd.DataFrame, day: dt.date, counts_day_of) -> pd.DataFrame:
    """With the pypistats source: the history of `day` as far as the dataset saw it, the
    `last_day` of each project fetched while pypistats' counts were those of `day`
    (`counts_day_of(updated_at)` gives that day). Partial: only the projects fetched then."""
    fetched = frame[frame["status"].eq(STATUS_VALID).fillna(False).to_numpy(dtype=bool)]
    fetched = fetched[[counts_day_of(t) == day for t in fetched["updated_at"]]]
    out = pd.DataFrame(
        {"date": day, "name": normalize_names(fetched["name"]).to_numpy(dtype=object), "downloads": fetched["last_day"].to_numpy(dtype="int64")}
    )
    return out[out["downloads"] > 0].reset_index(drop=True)


def merge_history(existing: Optional[pd.DataFrame], new: pd.DataFrame) -> pd.DataFrame:
    """A day's history with `new` rows over `existing` ones: never loses a project already there."""
    if existing is None or not len(existing):
        return new
    both = pd.concat([existing, new], ignore_index=True)
    return both.drop_duplicates("name", keep="last").reset_index(drop=True)
