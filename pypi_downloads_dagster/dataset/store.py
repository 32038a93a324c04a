"""Fetched chunks waiting to be published: one Parquet file per chunk, kept until the published
dataset holds every row of it. While a chunk runs, each answer is journaled as it arrives (one JSON
line, in a journal of that run alone), so a killed run loses no answer it got. The plan stores each
chunk's packages here too, so a run of a chunk knows them whatever plan came since.

Layout under the root (a folder every run of the deployment reaches: see README, "Run it on more
than one machine"):
- `<key>.parquet`: the chunk's fetched rows, replaced as a whole (temp file, fsync, rename);
- `journals/<key>/<run id>.jsonl`: answers of one run, appended (fsync per line) by that run only
  and deleted by it once folded into `<key>.parquet`, so no run ever deletes what another writes;
- `plans/<key>.json`: the chunk's packages (normalized names), written once by the plan;
- `<key>.rejected.jsonl`: lines and rows set aside (below).

This store, not Dagster's partition keys, is where fetched counts live between a chunk run and the
publish: merging reads every file in it, planning treats its rows as fetched, and a file is only
deleted once a publish has covered it. So an interrupted cycle, a failed publish or a new plan that
replaces the partition keys loses nothing.

No bad line or value wedges the store: a journal line or a file row that cannot be a fetch (not
JSON, counts outside int64, unknown status, a fetch time before pypistats or in the future) is set
aside in `<key>.rejected.jsonl` with a warning, and the rest of the chunk reads normally.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pypi_downloads_dagster.dataset.frames import newest_fetches, with_normalized
from pypi_downloads_dagster.dataset.schema import (
    COUNT_COLUMNS,
    EARLIEST_UPDATED_AT,
    MAX_CLOCK_SKEW_SECONDS,
    MAX_COUNT,
    STATUS_EMPTY,
    STATUS_VALID,
    STATUSES,
)

logger = logging.getLogger("pypi_downloads_dagster.dataset.store")

JOURNALS = "journals"
PLANS = "plans"
#: Lines and rows set aside because they cannot be a fetch: kept for a person, never read as data.
REJECTED = ".rejected.jsonl"

FETCHED_SCHEMA = pa.schema(
    [
        pa.field("normalized", pa.string()),
        *(pa.field(column, pa.int64()) for column in COUNT_COLUMNS),
        pa.field("status", pa.string()),
        pa.field("updated_at", pa.float64()),
    ]
)


class InvalidFetchRow(ValueError):
    """A fetch the store refuses to record (see `row_problem`); the message names the reason."""


def row_problem(row: dict, now: float) -> Optional[str]:
    """Why `row` (FETCHED_SCHEMA names; None for a null) cannot be a stored fetch, or None if it can.

    A row needs a normalized name, status 'valid' with three integer counts in [0, MAX_COUNT] or
    'empty' with none, and a finite `updated_at` in [EARLIEST_UPDATED_AT, now + MAX_CLOCK_SKEW_SECONDS].
    """
    name = row.get("normalized")
    if not isinstance(name, str) or not name:
        return f"normalized name missing ({name!r})"
    status = row.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        return f"{name}: status {status!r} is not one of {list(STATUSES)}"
    counts = {column: row.get(column) for column in COUNT_COLUMNS}
    if status == STATUS_VALID:
        for column, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                return f"{name}: {column} {value!r} is not an integer in [0, {MAX_COUNT}]"
    elif any(not _missing(value) for value in counts.values()):
        return f"{name}: an {STATUS_EMPTY!r} row has counts {list(counts.values())!r}"
    updated_at = row.get("updated_at")
    if isinstance(updated_at, bool) or not isinstance(updated_at, (int, float)) or not math.isfinite(updated_at):
        return f"{name}: updated_at {updated_at!r} is not a finite number"
    if not EARLIEST_UPDATED_AT <= updated_at <= now + MAX_CLOCK_SKEW_SECONDS:
        return f"{name}: updated_at {updated_at!r} is outside [{EARLIEST_UPDATED_AT:.0f}, now + {MAX_CLOCK_SKEW_SECONDS:.0f} s]"
    return None


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


class FetchStore:
    """Chunk results under `root`, named by partition key. `clock` gives "now" for the bound on
    fetch times (tests pass their own)."""

    @classmethod
    def in_storage(cls, storage_directory: str | os.PathLike) -> "FetchStore":
        """The store of a Dagster instance, in its storage folder (`$DAGSTER_HOME/storage`)."""
        return cls(Path(storage_directory) / "recent_stats_chunks")

    def __init__(self, root: str | os.PathLike, *, clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self._clock = clock

    def _path(self, key: str, suffix: str = ".parquet") -> Path:
        _check_name(key, "chunk key")
        return self.root / f"{key}{suffix}"

    def _journal_path(self, key: str, run_id: str) -> Path:
        _check_name(run_id, "run id")
        return self.root / JOURNALS / _checked(key) / f"{run_id}.jsonl"

    def _journals(self, key: str) -> list[Path]:
        folder = self.root / JOURNALS / _checked(key)
        try:
            return sorted(path for path in folder.iterdir() if path.suffix == ".jsonl")
        except FileNotFoundError:
            return []

    @contextlib.contextmanager
    def journal(self, key: str, run_id: str = "local"):
        """A `record(RecentCounts)` callable appending each answer to run `run_id`'s journal of
        chunk `key` at once (flushed and fsynced: a killed run, or a machine that lost power, keeps
        it). `write` folds the journal into the chunk's file; after a crash, `read` still sees it.
        `record` raises InvalidFetchRow (and writes nothing) for a fetch that cannot be stored."""
        lock = threading.Lock()
        path = self._journal_path(key, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            if _ends_cut_off(path):
                # A killed run's cut-off last line: end it, so the next answer starts its own line.
                handle.write("\n")

            def record(counts) -> None:
                row = dataclasses.asdict(counts)
                problem = row_problem(row, self._clock())
                if problem:
                    raise InvalidFetchRow(f"chunk {key}: not recorded: {problem}")
                line = json.dumps(row)
                with lock:
                    handle.write(line + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())

            yield record

    def write(self, key: str, fetched: pd.DataFrame, run_id: str = "local") -> Path:
        """Store one chunk's fetched rows (pypistats.FETCHED_COLUMNS) and fold run `run_id`'s
        journal into the chunk's file. A re-run of a chunk that is still stored adds to it (newest
        fetch per project), so rows an earlier run got are kept even where the re-run failed. Rows
        that cannot be a fetch (`row_problem`) are set aside in `<key>.rejected.jsonl` with a
        warning, not written. Journals of other runs are read, never deleted.

        One run writes a chunk at a time (the chunk lease in `leases.py`): two writers at once
        would each replace the file with their own merge."""
        target = self._path(key)
        fetched, rejected = _split_frame(fetched, self._clock(), "write")
        self._set_aside(key, rejected)
        fetched = newest_fetches([part for part in (self.read(key), fetched) if len(part)])
        if not len(fetched):  # newest_fetches of nothing has no columns
            fetched = _typed(pd.DataFrame(columns=FETCHED_SCHEMA.names))
        table = pa.Table.from_pandas(fetched[FETCHED_SCHEMA.names], schema=FETCHED_SCHEMA, preserve_index=False)
        _replace_atomically(target, lambda handle: pq.write_table(table, handle))
        self._journal_path(key, run_id).unlink(missing_ok=True)  # now folded into the file
        return target

    def save_plan(self, key: str, names: list[str]) -> None:
        """Record chunk `key`'s packages (normalized names), for any run of it, under any later plan."""
        data = json.dumps({"chunk": key, "packages": list(names)}).encode()
        _replace_atomically(self.root / PLANS / f"{_checked(key)}.json", lambda handle: handle.write(data))

    def planned(self, key: str) -> list[str]:
        """The packages the plan gave chunk `key`. Raises KeyError when no plan recorded it."""
        try:
            return json.loads((self.root / PLANS / f"{_checked(key)}.json").read_bytes())["packages"]
        except FileNotFoundError:
            raise KeyError(key) from None

    def drop_plans(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / PLANS / f"{_checked(key)}.json").unlink(missing_ok=True)

    def keys(self) -> list[str]:
        """Chunks with fetched rows: a file, or a journal of some run."""
        if not self.root.is_dir():
            return []
        names = {path.name[: -len(".parquet")] for path in self.root.glob("*.parquet")}
        names.update(folder.name for folder in (self.root / JOURNALS).glob("*") if any(folder.glob("*.jsonl")))
        return sorted(name for name in names if not name.startswith("."))  # `.tmp-*` files are not chunks

    def read(self, key: str) -> pd.DataFrame:
        """The chunk's fetched rows: its file plus any journal a run left (newest fetch per project).

        Journal lines and file rows that cannot be a fetch (not JSON, except a cut-off last line;
        values failing `row_problem`) are left out, appended to `<key>.rejected.jsonl` and named in
        a warning on the `pypi_downloads_dagster.dataset.store` logger; the rest reads normally.
        """
        now = self._clock()
        parts, rejected = [], []
        # The journals first, then the file, each opened without an exists() check first: a run that
        # folds its journal into the file in between replaces the file before it unlinks the
        # journal, so whatever this read misses in one it finds in the other.
        for path in self._journals(key):
            try:
                journaled, bad = _read_journal(path, now, f"journal {path.name}")
            except FileNotFoundError:
                continue
            parts.append(journaled)
            rejected += bad
        try:
            stored = pq.read_table(self._path(key)).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            stored, bad = _split_frame(stored, now, "file")
            parts.append(stored)
            rejected += bad
        except FileNotFoundError:
            pass
        self._set_aside(key, rejected)
        parts = [part for part in parts if len(part)]  # newest_fetches of nothing has no columns
        frame = newest_fetches(parts) if len(parts) > 1 else (parts[0] if parts else _typed(pd.DataFrame(columns=FETCHED_SCHEMA.names)))
        frame = frame.reset_index(drop=True)
        frame["status"] = frame["status"].astype(object)
        frame["normalized"] = frame["normalized"].astype(object)
        return frame

    def fetched_since(self, since: float, keys: Optional[list[str]] = None) -> set[str]:
        """Projects fetched at or after `since` in any chunk (or in `keys`): their counts cannot be
        newer, whichever plan or chunk asked for them."""
        frames = [self.read(key) for key in (self.keys() if keys is None else keys)]
        return {name for frame in frames for name in frame.loc[frame["updated_at"] >= since, "normalized"]}

    def read_all(self) -> dict[str, pd.DataFrame]:
        """Every stored chunk by key."""
        return {key: self.read(key) for key in self.keys()}

    def remove_published(
        self, published: pd.DataFrame, on_index: pd.Series, keep_fetched_since: float, busy: Collection[str] = ()
    ) -> list[str]:
        """Delete the chunks whose every row is in `published` with an `updated_at` at least as new,
        or belongs to a project no longer on the index (`on_index`: normalized names). Returns the
        deleted keys; a chunk with any row not yet published stays, and so does a chunk with rows
        fetched since `keep_fetched_since` (so a re-run of it that day knows to ask for nothing)
        and a chunk in `busy` (a run holds it and may be writing its journal)."""
        keys = [key for key in self.keys() if key not in set(busy)]
        if not keys:
            return []
        rows = pd.concat([self.read(key).assign(chunk=key) for key in keys], ignore_index=True)
        # One lookup over every stored row (not one per chunk: at 900k projects that is minutes).
        published_at = with_normalized(published).set_index("normalized")["updated_at"].reindex(rows["normalized"]).to_numpy()
        updated_at = rows["updated_at"].to_numpy()
        listed = pd.Index(pd.Series(on_index).drop_duplicates()).get_indexer(rows["normalized"]) >= 0  # not isin: slow on Arrow strings
        covered = (published_at >= updated_at) | ~listed
        removable = pd.Series(covered & (updated_at < keep_fetched_since)).groupby(rows["chunk"].to_numpy()).all()
        removed = [key for key in keys if removable.get(key, False)]
        for key in removed:
            # The rejected file (if any) stays: it is for a person to inspect, never read as data.
            for path in self._journals(key):  # journals first: a crash in between leaves the file, not a half
                path.unlink(missing_ok=True)
            self._path(key).unlink(missing_ok=True)
        return removed

    def _set_aside(self, key: str, rejected: list[dict]) -> None:
        """Append `rejected` ({source, reason, line}) to `<key>.rejected.jsonl` and warn.
        Every read finds the same bad lines again: a record already in the file is not repeated."""
        if not rejected:
            return
        path = self._path(key, REJECTED)
        records = [json.dumps({"chunk": key, **item}, sort_keys=True) for item in rejected]
        try:
            known = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            known = []
        new = [record for record in dict.fromkeys(records) if record not in set(known)]
        if new:
            # Replaced whole, no lock: readers racing here set aside the same lines, and a record one
            # of them drops is found again by the next read.
            text = "".join(record + "\n" for record in known + new).encode()
            _replace_atomically(path, lambda handle: handle.write(text))
        logger.warning(
            "chunk %s: set aside %d line(s) that cannot be a fetch in %s (first: %s)",
            key, len(rejected), path.name, rejected[0]["reason"],
        )


def _check_name(name: str, what: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid {what} {name!r}")


def _checked(key: str) -> str:
    _check_name(key, "chunk key")
    return key


def _replace_atomically(target: Path, write: Callable) -> None:
    """Write `target` through `write(binary handle)` into a temp file beside it, fsync it, rename it
    over `target` and fsync the folder: readers see the old file or the new one, never half."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", suffix=target.suffix, delete=False) as handle:
        try:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _ends_cut_off(path: Path) -> bool:
    """Whether the file's last line has no newline (a run was killed while writing it)."""
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _read_journal(path: Path, now: float, source: str = "journal") -> tuple[pd.DataFrame, list[dict]]:
    """The journal's fetches, and the lines set aside ({source, reason, line})."""
    rows, rejected = [], []
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        cut_off = number == len(lines)  # no newline after it: a killed run's (or a writer's) last line
        try:
            text = raw.decode("utf-8")
            row = json.loads(text)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
            if cut_off:
                continue
            rejected.append({"source": f"{source} line {number}", "reason": f"not valid JSON ({exc})", "line": raw.decode("utf-8", "backslashreplace")})
            continue
        problem = row_problem(row, now) if isinstance(row, dict) else f"not a JSON object ({type(row).__name__})"
        if problem:
            rejected.append({"source": f"{source} line {number}", "reason": problem, "line": text})
        else:
            rows.append(row)
    # Column by column: a frame built from the rows would pass counts with a null through float64,
    # which rounds counts above 2**53.
    columns = {column: [row.get(column) for row in rows] for column in FETCHED_SCHEMA.names}
    for column in COUNT_COLUMNS:
        columns[column] = pd.array(columns[column], dtype="Int64")
    return _typed(pd.DataFrame(columns)), rejected


def _split_frame(frame: pd.DataFrame, now: float, source: str) -> tuple[pd.DataFrame, list[dict]]:
    """`frame` (FETCHED_SCHEMA columns) without the rows `row_problem` refuses, and those rows
    set aside ({source, reason, line}). A vectorised pass finds the suspects; only they are checked
    one by one (a full store is ~900k rows)."""
    if not len(frame):
        return frame, []
    missing_columns = [column for column in FETCHED_SCHEMA.names if column not in frame.columns]
    if missing_columns:
        frame = frame.assign(**{column: None for column in missing_columns})
    keep = _plainly_good(frame, now)
    if keep.all():
        return frame, []
    rejected = []
    for position in np.flatnonzero(~keep):
        row = {column: _plain(frame[column].iat[position]) for column in FETCHED_SCHEMA.names}
        problem = row_problem(row, now)
        if problem:
            rejected.append({"source": f"{source} row {position}", "reason": problem, "line": json.dumps(row, default=str)})
        else:
            keep[position] = True
    return _typed(frame.iloc[keep].reset_index(drop=True)), rejected


def _plainly_good(frame: pd.DataFrame, now: float) -> np.ndarray:
    """Rows that surely pass `row_problem`; a False only means "check this row one by one".
    Plain numpy: pandas' per-operation overhead would triple the time to read a full store."""
    rows = len(frame)
    if any(str(frame[column].dtype) not in ("Int64", "int64") for column in COUNT_COLUMNS) or str(frame["updated_at"].dtype) != "float64":
        return np.zeros(rows, dtype=bool)  # unusual types: let row_problem judge every row
    present = np.column_stack([frame[column].notna().to_numpy() for column in COUNT_COLUMNS])
    non_negative = np.column_stack([frame[column].to_numpy(dtype=np.int64, na_value=0) >= 0 for column in COUNT_COLUMNS])
    status = frame["status"]
    valid = status.eq(STATUS_VALID).to_numpy(dtype=bool, na_value=False) & present.all(axis=1) & non_negative.all(axis=1)
    empty = status.eq(STATUS_EMPTY).to_numpy(dtype=bool, na_value=False) & ~present.any(axis=1)
    updated_at = frame["updated_at"].to_numpy()
    timely = (updated_at >= EARLIEST_UPDATED_AT) & (updated_at <= now + MAX_CLOCK_SKEW_SECONDS)
    names = frame["normalized"]
    if isinstance(names.dtype, pd.StringDtype):  # every non-null value is a str
        named = names.str.len().to_numpy(dtype="float64", na_value=0) > 0
    else:
        named = np.fromiter((isinstance(name, str) and name != "" for name in names.to_numpy(dtype=object)), bool, rows)
    return named & (valid | empty) & timely


def _plain(value):
    """A frame cell as the Python value a journal line would hold (None for any null)."""
    if _missing(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[list(FETCHED_SCHEMA.names)].copy()
    for column in COUNT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    frame["updated_at"] = frame["updated_at"].astype("float64")
    return frame
