"""The published dataset's schema, written down once, and the migration of older files to it.

Every reader and writer of the dataset goes through `conform`, `read_dataset_file` and
`dataset_to_parquet` so the columns, their types and their order are decided here only.
"""

from __future__ import annotations

import io
import json
import re
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

COUNT_COLUMNS = ("last_day", "last_week", "last_month")

#: The columns consumers read, in file order. Counts are nullable 64-bit integers; `updated_at` is
#: Unix seconds (float) when the row was fetched.
DATASET_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("last_day", pa.int64()),
        pa.field("last_week", pa.int64()),
        pa.field("last_month", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("updated_at", pa.float64()),
    ]
)
COLUMNS = tuple(DATASET_SCHEMA.names)

#: The published file, and the older CSV copy earlier versions may have left in the repo.
DATASET_FILE = "dataset.parquet"
LEGACY_DATASET_FILE = "dataset.csv"

#: What each column means, for the dataset card: (type, description).
COLUMN_DOCS = {
    "name": ("string", "Project name as PyPI displays it (case kept, e.g. `Django`)."),
    "url": ("string", "The project's page in the PyPI simple index, `https://pypi.org/simple/<normalized-name>/`."),
    "last_day": ("int64, nullable", "Downloads on the last full day (UTC), mirrors excluded; null unless `status` is `valid`."),
    "last_week": ("int64, nullable", "Downloads in the last 7 days, mirrors excluded; null unless `status` is `valid`."),
    "last_month": ("int64, nullable", "Downloads in the last 30 days, mirrors excluded; null unless `status` is `valid`."),
    "status": ("string, nullable", "`valid`: pypistats returned counts; `empty`: pypistats has no data for the project; null: never fetched."),
    "updated_at": ("float64, nullable", "When the row was fetched, in Unix seconds (UTC); null when never fetched."),
}

#: `status` values: pypistats returned counts / pypistats has no data for the project (404).
STATUS_VALID = "valid"
STATUS_EMPTY = "empty"
STATUSES = (STATUS_VALID, STATUS_EMPTY)

_NORMALIZE = re.compile(r"[-_.]+")

#: Bounds every stored count and fetch time must keep. Counts are int64 in the file; a fetch time
#: before pypistats existed or ahead of the clock (beyond a little skew between machines) is a
#: broken clock or a broken file, and such a row would never be stale again.
MAX_COUNT = 2**63 - 1
EARLIEST_UPDATED_AT = 1_514_764_800.0  # 2018-01-01 UTC: pypistats.org went online in 2018
MAX_CLOCK_SKEW_SECONDS = 300.0

#: Where a project's page is, whatever index URL the data was read from (that may hold credentials).
PUBLIC_INDEX_URL = "https://pypi.org/simple/"


class DatasetFormatError(ValueError):
    """A dataset file that cannot be read as this dataset (bad columns, bad values, corrupt bytes)."""


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name, the form pypistats and the index URLs use."""
    return _NORMALIZE.sub("-", name).lower()


def normalize_names(names: pd.Series) -> pd.Series:
    """`normalize_name` over a whole column, in Arrow's compute kernels (900k names in half a second;
    a Python regex per name takes seconds)."""
    normalized = pc.utf8_lower(pc.replace_substring_regex(pa.array(names, type=pa.string()), pattern=_NORMALIZE.pattern, replacement="-"))
    return normalized.to_pandas().astype(names.dtype if names.dtype != object else object).set_axis(names.index)


def empty_dataset() -> pd.DataFrame:
    """A dataset with no rows and the current dtypes."""
    return conform(pd.DataFrame({column: [] for column in COLUMNS}))


def conform(frame: pd.DataFrame, *, source: str = "dataset") -> pd.DataFrame:
    """Return `frame` in the current schema: column order, dtypes, derived `status` for old files.

    Accepts the earlier float64 layout (NaN for null, maybe no `status` column) and migrates it.
    Raises `DatasetFormatError` naming the problem for missing or unexpected columns, counts that
    are not whole non-negative numbers, unknown status values, or missing names.
    """
    columns = list(frame.columns)
    missing = [c for c in COLUMNS if c not in columns and c != "status"]
    unexpected = [c for c in columns if c not in COLUMNS]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing columns {missing}")
        if unexpected:
            problems.append(f"unexpected columns {unexpected}")
        raise DatasetFormatError(f"{source}: {'; '.join(problems)} (expected {list(COLUMNS)})")

    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for column in ("name", "url"):
        values = frame[column].reset_index(drop=True)
        if values.isna().any():
            raise DatasetFormatError(f"{source}: column {column!r} has {int(values.isna().sum())} empty values")
        out[column] = values.astype(str)

    for column in COUNT_COLUMNS:
        out[column] = _counts(frame[column].reset_index(drop=True), column, source)

    updated_at = pd.to_numeric(frame["updated_at"].reset_index(drop=True), errors="coerce")
    bad = updated_at.isna() & frame["updated_at"].reset_index(drop=True).notna()
    if bad.any():
        raise DatasetFormatError(f"{source}: column 'updated_at' has {int(bad.sum())} non-numeric values")
    out["updated_at"] = updated_at.astype("float64")

    if "status" in columns:
        status = frame["status"].reset_index(drop=True).astype(object).where(frame["status"].notna().to_numpy(), None)
        unknown = set(status.dropna().unique()) - set(STATUSES)
        if unknown:
            raise DatasetFormatError(f"{source}: column 'status' has unknown values {sorted(map(str, unknown))}")
    else:
        # Earlier files had no status: fetched with counts = valid, fetched without = empty.
        status = pd.Series(np.where(out["updated_at"].notna(), STATUS_EMPTY, None), dtype=object)
        status[out["last_month"].notna().to_numpy()] = STATUS_VALID
    out.insert(5, "status", status.astype(object))
    return out[list(COLUMNS)]


def _counts(values: pd.Series, column: str, source: str) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce")
    if (numeric.isna() & values.notna()).any():
        raise DatasetFormatError(f"{source}: column {column!r} has non-numeric values")
    as_float = numeric.astype("float64")
    fractional = as_float.notna() & (as_float != np.floor(as_float))
    negative = as_float < 0
    if fractional.any() or negative.any():
        raise DatasetFormatError(f"{source}: column {column!r} has values that are not whole non-negative counts")
    return numeric.astype("Int64")


def _drop_written_index(frame: pd.DataFrame) -> pd.DataFrame:
    """A CSV saved with pandas' default `index=True` starts with an unnamed 0..n-1 column: that
    is the row number, not data. Any other extra column still fails in `conform`."""
    first = frame.columns[0] if len(frame.columns) else None
    if first == "Unnamed: 0" and frame[first].tolist() == list(range(len(frame))):
        return frame.drop(columns=[first])
    return frame


#: Our key in the Parquet schema metadata: the publish guards' high-water marks travel with the data.
BASELINE_METADATA_KEY = b"pypi_downloads_dagster.guard_baseline"


def dataset_to_parquet(frame: pd.DataFrame, *, baseline: Optional[dict] = None) -> bytes:
    """Serialise a conformed dataset to Parquet bytes with `DATASET_SCHEMA` (deterministic output).

    The Arrow schema types the counts for pyarrow and 🤗 Datasets (nullable int64); the pandas
    metadata next to it makes `pd.read_parquet` give nullable `Int64` counts instead of float64
    with NaN. No index is stored.
    """
    table = pa.Table.from_pandas(conform(frame), schema=DATASET_SCHEMA, preserve_index=False)
    # Our own pandas metadata, not the frame's: pyarrow would copy `frame.attrs` into it, and
    # identical data must always give identical bytes (an unchanged dataset is never re-committed).
    metadata = {b"pandas": _pandas_metadata()}
    if baseline:
        metadata[BASELINE_METADATA_KEY] = json.dumps(baseline, sort_keys=True).encode()
    table = table.replace_schema_metadata(metadata)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _pandas_metadata() -> bytes:
    """The `pandas` schema metadata for `DATASET_SCHEMA`: counts as the `Int64` extension dtype, no index.

    A function of the schema and the installed pandas/pyarrow only: the two version strings are the
    sole varying parts, and they are stable for a given install (the Parquet footer names the
    pyarrow version anyway).
    """
    # "object" for strings reads as pandas' default string dtype (`str` in pandas 3, object before).
    numpy_types = {pa.string(): ("unicode", "object"), pa.int64(): ("int64", "Int64"), pa.float64(): ("float64", "float64")}
    columns = [
        {"name": f.name, "field_name": f.name, "pandas_type": numpy_types[f.type][0], "numpy_type": numpy_types[f.type][1], "metadata": None}
        for f in DATASET_SCHEMA
    ]
    return json.dumps(
        {
            "index_columns": [],
            "column_indexes": [],
            "columns": columns,
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": pd.__version__,
        }
    ).encode()


def read_dataset_baseline(data: bytes) -> Optional[dict]:
    """The guards' high-water marks stored in a `dataset.parquet` (None in files without them)."""
    try:
        raw = (pq.read_schema(io.BytesIO(data)).metadata or {}).get(BASELINE_METADATA_KEY)
        return json.loads(raw) if raw else None
    except Exception as exc:  # the file itself was read already: only our key can be bad
        raise DatasetFormatError(f"dataset.parquet: unreadable guard baseline metadata ({exc})") from exc


def read_dataset_file(data: bytes, filename: str) -> pd.DataFrame:
    """Parse `dataset.parquet` or `dataset.csv` bytes into a conformed frame.

    Raises `DatasetFormatError` when the bytes are not a readable file of that kind or its
    columns and values do not fit the dataset (never returns an empty frame for a bad file).
    """
    try:
        if filename.endswith(".parquet"):
            # int64 straight to Int64, also in files without pandas metadata: a detour through
            # float64 would round counts above 2**53.
            frame = pq.read_table(io.BytesIO(data)).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        elif filename.endswith(".csv"):
            frame = pd.read_csv(io.BytesIO(data), dtype={"name": str, "url": str, "status": str}, keep_default_na=False, na_values=[""])
            frame = _drop_written_index(frame)
        else:
            raise DatasetFormatError(f"{filename}: unsupported dataset file type")
    except DatasetFormatError:
        raise
    except Exception as exc:  # pyarrow/pandas raise many types for corrupt bytes
        raise DatasetFormatError(f"{filename}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return conform(frame, source=filename)
