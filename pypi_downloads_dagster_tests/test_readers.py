"""dataset.parquet as its consumers read it: pandas, pyarrow and 🤗 Datasets each get int64 counts
with real nulls, and the dataset card says so truthfully."""

from __future__ import annotations

import re

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pypi_downloads_dagster.publishing.card import READER_TYPES, render_dataset_card
from pypi_downloads_dagster.dataset.schema import COUNT_COLUMNS, conform, dataset_to_parquet

BIG = 2**53 + 1  # float64 cannot hold it: a detour through float would show


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return conform(
        pd.DataFrame(
            {
                "name": ["Django", "empty-one", "never", "zope.interface"],
                "url": [f"https://pypi.org/simple/{n}/" for n in ("django", "empty-one", "never", "zope-interface")],
                "last_day": pd.array([BIG, None, None, 0], dtype="Int64"),
                "last_week": pd.array([700, None, None, 3], dtype="Int64"),
                "last_month": pd.array([3000, None, None, 12], dtype="Int64"),
                "status": ["valid", "empty", None, "valid"],
                "updated_at": [1_709_251_200.25, 1_709_000_000.0, None, 1_708_000_000.5],
            }
        )
    )


@pytest.fixture(scope="module")
def path(frame, tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "dataset.parquet"
    path.write_bytes(dataset_to_parquet(frame))
    return path


@pytest.fixture(scope="module")
def hf_dataset(path, tmp_path_factory):
    return datasets.Dataset.from_parquet(str(path), cache_dir=str(tmp_path_factory.mktemp("hf-cache")))


def test_pandas_reads_nullable_int64_counts(frame, path):
    df = pd.read_parquet(path)
    for column in COUNT_COLUMNS:
        assert str(df[column].dtype) == "Int64", column
        assert df[column].isna().tolist() == [False, True, True, False]
    assert df["last_day"][0] == BIG and df["last_day"][1] is pd.NA
    assert str(df["updated_at"].dtype) == "float64"
    assert df["updated_at"].tolist()[0] == 1_709_251_200.25
    assert isinstance(df.index, pd.RangeIndex) and "__index_level_0__" not in df.columns
    assert df["name"].tolist() == frame["name"].tolist()


def test_pyarrow_reads_int64_counts(path):
    table = pq.read_table(path)
    for column in COUNT_COLUMNS:
        assert table.schema.field(column).type == pa.int64()
        assert table.column(column).null_count == 2
    assert table.column("last_day").to_pylist() == [BIG, None, None, 0]
    assert table.schema.field("updated_at").type == pa.float64()


def test_datasets_reads_int64_features_with_none(hf_dataset):
    for column in COUNT_COLUMNS:
        assert hf_dataset.features[column] == datasets.Value("int64")
    assert hf_dataset.features["updated_at"] == datasets.Value("float64")
    assert hf_dataset["last_day"] == [BIG, None, None, 0]
    assert hf_dataset[2]["last_month"] is None and hf_dataset[2]["status"] is None


def test_datasets_load_dataset_parquet_builder_agrees(path, tmp_path):
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path))
    assert all(ds.features[c] == datasets.Value("int64") for c in COUNT_COLUMNS)
    assert ds["last_week"] == [700, None, None, 3]


def test_the_card_states_what_each_reader_gives(frame, path, hf_dataset):
    """Every claim of the card's reader table, checked against the reader itself."""
    df, table = pd.read_parquet(path), pq.read_table(path)
    observed = {
        "pandas": (str(df["last_month"].dtype), str(df["last_month"][1])),
        "pyarrow": (str(table.schema.field("last_month").type), "null" if not table.column("last_month")[1].is_valid else "?"),
        "datasets": (hf_dataset.features["last_month"].dtype, repr(hf_dataset[1]["last_month"])),
    }
    schema = re.split(r"^## ", render_dataset_card(frame, repo_id=None), flags=re.MULTILINE)
    [schema] = [part for part in schema if part.startswith("Schema")]
    rows = [line.split(" | ") for line in schema.splitlines() if line.startswith(("| pandas", "| pyarrow", "| datasets"))]
    claimed = {cells[0].strip("| "): (cells[2].strip("`"), cells[3].strip("`| ")) for cells in rows}
    assert claimed == observed
    assert set(claimed) == {reader for reader, *_ in READER_TYPES}
