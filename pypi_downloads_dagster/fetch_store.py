"""Fetched chunks waiting to be published: one Parquet file per chunk, kept until the published
dataset holds every row of it.

This store, not Dagster's partition keys, is where fetched counts live between a chunk run and the
publish: merging reads every file in it, planning treats its rows as fetched, and a file is only
deleted once a publish has covered it. So an interrupted cycle, a failed publish or a new plan that
replaces the partition keys loses nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pypi_downloads_dagster.dataset import newest_fetches, with_normalized
from pypi_downloads_dagster.schema import COUNT_COLUMNS

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

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid chunk key {key!r}")
        return self.root / f"{key}.parquet"

    def write(self, key: str, fetched: pd.DataFrame) -> Path:
        """Store one chunk's fetched rows (pypistats.FETCHED_COLUMNS). A re-run of a chunk that is
        still stored adds to it (newest fetch per project), so rows an earlier run got are kept
        even where the re-run failed."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self._path(key)
        if target.exists():
            fetched = newest_fetches([self.read(key), fetched])
        table = pa.Table.from_pandas(fetched[FETCHED_SCHEMA.names], schema=FETCHED_SCHEMA, preserve_index=False)
        # Write then rename: a crash mid-write never leaves a half file that a merge would read.
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".tmp-", suffix=".parquet", delete=False) as handle:
            pq.write_table(table, handle)
        os.replace(handle.name, target)
        return target

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(path.stem for path in self.root.glob("*.parquet") if not path.name.startswith(".tmp-"))

    def read(self, key: str) -> pd.DataFrame:
        frame = pq.read_table(self._path(key)).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        frame["status"] = frame["status"].astype(object)
        frame["normalized"] = frame["normalized"].astype(object)
        return frame

    def read_all(self) -> dict[str, pd.DataFrame]:
        """Every stored chunk by key."""
        return {key: self.read(key) for key in self.keys()}

    def remove_published(self, published: pd.DataFrame, on_index: pd.Series) -> list[str]:
        """Delete the chunks whose every row is in `published` with an `updated_at` at least as new,
        or belongs to a project no longer on the index (`on_index`: normalized names). Returns the
        deleted keys; a chunk with any row not yet published stays."""
        dataset = with_normalized(published).set_index("normalized")["updated_at"]
        index_names = set(on_index)
        removed = []
        for key in self.keys():
            chunk = self.read(key)
            published_at = dataset.reindex(chunk["normalized"]).to_numpy()
            covered = (published_at >= chunk["updated_at"].to_numpy()) | ~chunk["normalized"].isin(index_names).to_numpy()
            if covered.all():
                self._path(key).unlink(missing_ok=True)
                removed.append(key)
        return removed
