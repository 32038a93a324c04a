"""Fetched chunks waiting to be published: one Parquet file per chunk, kept until the published
dataset holds every row of it. While a chunk runs, each answer is journaled as it arrives (one JSON
line), so a killed run loses no answer it got.

This store, not Dagster's partition keys, is where fetched counts live between a chunk run and the
publish: merging reads every file in it, planning treats its rows as fetched, and a file is only
deleted once a publish has covered it. So an interrupted cycle, a failed publish or a new plan that
replaces the partition keys loses nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pypi_downloads_dagster.dataset import newest_fetches, with_normalized
from pypi_downloads_dagster.schema import COUNT_COLUMNS

JOURNAL = ".journal.jsonl"

FETCHED_SCHEMA = pa.schema(
    [
        pa.field("normalized", pa.string()),
        *(pa.field(column, pa.int64()) for column in COUNT_COLUMNS),
        pa.field("status", pa.string()),
        pa.field("updated_at", pa.float64()),
    ]
)


class FetchStore:
    """Chunk results under `root`, named by partition key."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str, suffix: str = ".parquet") -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid chunk key {key!r}")
        return self.root / f"{key}{suffix}"

    @contextlib.contextmanager
    def journal(self, key: str):
        """A `record(RecentCounts)` callable appending each answer to the chunk's journal at once.
        `write` folds the journal into the chunk's file; after a crash, `read` still sees it."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = threading.Lock()
        with open(self._path(key, JOURNAL), "a", encoding="utf-8") as handle:

            def record(counts) -> None:
                line = json.dumps(dataclasses.asdict(counts))
                with lock:
                    handle.write(line + "\n")
                    handle.flush()

            yield record

    def write(self, key: str, fetched: pd.DataFrame) -> Path:
        """Store one chunk's fetched rows (pypistats.FETCHED_COLUMNS). A re-run of a chunk that is
        still stored adds to it (newest fetch per project), so rows an earlier run got are kept
        even where the re-run failed."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self._path(key)
        if target.exists() or self._path(key, JOURNAL).exists():
            fetched = newest_fetches([self.read(key), fetched])
        table = pa.Table.from_pandas(fetched[FETCHED_SCHEMA.names], schema=FETCHED_SCHEMA, preserve_index=False)
        # Write then rename: a crash mid-write never leaves a half file that a merge would read.
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".tmp-", suffix=".parquet", delete=False) as handle:
            pq.write_table(table, handle)
        os.replace(handle.name, target)
        self._path(key, JOURNAL).unlink(missing_ok=True)  # now folded into the file
        return target

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = set()
        for suffix in (".parquet", JOURNAL):
            names.update(path.name[: -len(suffix)] for path in self.root.glob(f"*{suffix}"))
        return sorted(name for name in names if not name.startswith(".") and not name.endswith(".journal"))

    def read(self, key: str) -> pd.DataFrame:
        """The chunk's fetched rows: its file plus any journal a run left (newest fetch per project)."""
        parts = []
        if self._path(key).exists():
            parts.append(pq.read_table(self._path(key)).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get))
        if self._path(key, JOURNAL).exists():
            parts.append(_read_journal(self._path(key, JOURNAL)))
        frame = newest_fetches(parts) if len(parts) > 1 else (parts[0] if parts else _read_journal(None))
        frame = frame.reset_index(drop=True)
        frame["status"] = frame["status"].astype(object)
        frame["normalized"] = frame["normalized"].astype(object)
        return frame

    def fetched_since(self, key: str, since: float) -> set[str]:
        """Projects of chunk `key` fetched at or after `since` (their counts cannot be newer)."""
        if key not in self.keys():
            return set()
        frame = self.read(key)
        return set(frame.loc[frame["updated_at"] >= since, "normalized"])

    def read_all(self) -> dict[str, pd.DataFrame]:
        """Every stored chunk by key."""
        return {key: self.read(key) for key in self.keys()}

    def remove_published(self, published: pd.DataFrame, on_index: pd.Series, keep_fetched_since: float) -> list[str]:
        """Delete the chunks whose every row is in `published` with an `updated_at` at least as new,
        or belongs to a project no longer on the index (`on_index`: normalized names). Returns the
        deleted keys; a chunk with any row not yet published stays, and so does a chunk with rows
        fetched since `keep_fetched_since` (so a re-run of it that day knows to ask for nothing)."""
        keys = self.keys()
        if not keys:
            return []
        rows = pd.concat([self.read(key).assign(chunk=key) for key in keys], ignore_index=True)
        # One lookup over every stored row (not one per chunk: at 900k projects that is minutes).
        published_at = with_normalized(published).set_index("normalized")["updated_at"].reindex(rows["normalized"]).to_numpy()
        updated_at = rows["updated_at"].to_numpy()
        covered = (published_at >= updated_at) | ~rows["normalized"].isin(on_index).to_numpy()
        removable = pd.Series(covered & (updated_at < keep_fetched_since)).groupby(rows["chunk"].to_numpy()).all()
        removed = [key for key in keys if removable.get(key, False)]
        for key in removed:
            self._path(key).unlink(missing_ok=True)
            self._path(key, JOURNAL).unlink(missing_ok=True)
        return removed


def _read_journal(path: Optional[Path]) -> pd.DataFrame:
    rows = []
    if path is not None:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # the last line of a killed run may be cut short
                continue
    frame = pd.DataFrame(rows, columns=FETCHED_SCHEMA.names)
    for column in COUNT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    frame["updated_at"] = frame["updated_at"].astype("float64")
    return frame
