import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pypi_downloads_dagster.dataset.schema import (
    COLUMNS,
    COUNT_COLUMNS,
    DATASET_SCHEMA,
    DatasetFormatError,
    conform,
    dataset_to_parquet,
    empty_dataset,
    normalize_name,
    normalize_names,
    read_dataset_file,
)


def old_float_frame():
    """The earlier tool's layout: float64 counts with NaN, no status column."""
    return pd.DataFrame(
        {
            "name": ["Django", "nan", "never-fetched", "zope.interface"],
            "url": [f"https://pypi.org/simple/{n}/" for n in ("django", "nan", "never-fetched", "zope-interface")],
            "last_day": [100.0, np.nan, np.nan, 5.0],
            "last_week": [700.0, np.nan, np.nan, 35.0],
            "last_month": [3000.0, np.nan, np.nan, 150.0],
            "updated_at": [1_700_000_000.5, 1_700_000_100.0, np.nan, 1_700_000_200.0],
        }
    )


def test_old_float_layout_is_migrated_with_derived_status():
    frame = conform(old_float_frame())
    assert list(frame.columns) == list(COLUMNS)
    assert frame["status"].tolist() == ["valid", "empty", None, "valid"]
    assert str(frame["last_day"].dtype) == "Int64"
    assert frame["last_month"].tolist()[0] == 3000 and frame["last_month"].isna().tolist() == [False, True, True, False]
    assert frame["updated_at"].tolist()[0] == 1_700_000_000.5


def test_parquet_round_trip_keeps_schema_and_values():
    frame = conform(old_float_frame())
    data = dataset_to_parquet(frame)
    table = pq.read_table(io.BytesIO(data))
    assert table.schema.equals(DATASET_SCHEMA, check_metadata=False)
    back = read_dataset_file(data, "dataset.parquet")
    pd.testing.assert_frame_equal(back, frame)
    assert dataset_to_parquet(back) == data, "same data must give the same bytes"


def test_parquet_bytes_depend_on_the_data_only():
    frame = conform(old_float_frame())
    data = dataset_to_parquet(frame)
    decorated = frame.set_axis([7, 3, 5, 1]).copy()
    decorated.attrs["run_id"] = "abc"  # pyarrow would copy attrs into the pandas metadata
    assert dataset_to_parquet(decorated) == data
    assert dataset_to_parquet(old_float_frame()) == data, "conformed or not, same data, same bytes"


def test_parquet_pandas_metadata_is_fixed_and_types_counts_as_Int64():
    metadata = pq.read_schema(io.BytesIO(dataset_to_parquet(conform(old_float_frame())))).pandas_metadata
    assert metadata["index_columns"] == [] and metadata["attributes"] == {}
    assert [c["name"] for c in metadata["columns"]] == list(COLUMNS)
    numpy_types = {c["name"]: c["numpy_type"] for c in metadata["columns"]}
    assert {numpy_types[c] for c in COUNT_COLUMNS} == {"Int64"}
    assert numpy_types["updated_at"] == "float64"
    # The only install-dependent parts: stable for a given pandas/pyarrow.
    assert metadata["pandas_version"] == pd.__version__
    assert metadata["creator"] == {"library": "pyarrow", "version": pa.__version__}
    assert pq.read_schema(io.BytesIO(dataset_to_parquet(empty_dataset()))).pandas_metadata == metadata


def test_pandas_reads_the_file_with_nullable_counts():
    back = pd.read_parquet(io.BytesIO(dataset_to_parquet(conform(old_float_frame()))))
    assert [str(back[c].dtype) for c in COUNT_COLUMNS] == ["Int64"] * 3
    assert back["last_month"].isna().tolist() == [False, True, True, False]
    assert str(back["updated_at"].dtype) == "float64"


def test_counts_beyond_float_precision_survive_reading():
    big = 2**53 + 1
    frame = conform(old_float_frame()).assign(last_week=pd.array([big, None, None, 1], dtype="Int64"))
    data = dataset_to_parquet(frame)
    assert read_dataset_file(data, "dataset.parquet")["last_week"][0] == big
    # Also from a file without pandas metadata (as this project wrote them before).
    table = pq.read_table(io.BytesIO(data)).replace_schema_metadata(None)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    assert read_dataset_file(sink.getvalue(), "dataset.parquet")["last_week"][0] == big


def test_parquet_of_the_old_tool_reads_even_with_a_stored_index():
    # pandas stores a non-default index (left by sorting) as a column; it is not data.
    old = old_float_frame().sort_values("updated_at", ascending=False)
    buffer = io.BytesIO()
    old.to_parquet(buffer)
    frame = read_dataset_file(buffer.getvalue(), "dataset.parquet")
    assert list(frame.columns) == list(COLUMNS)
    assert frame["status"].tolist() == ["valid", "empty", "valid", None]
    assert str(frame["last_day"].dtype) == "Int64"


def test_csv_saved_with_its_row_numbers_reads_but_other_extra_columns_fail():
    with_index = old_float_frame().to_csv().encode()  # pandas' default: index=True
    assert read_dataset_file(with_index, "dataset.csv")["name"].tolist()[0] == "Django"
    shuffled = old_float_frame().set_axis([3, 1, 0, 2]).to_csv().encode()
    with pytest.raises(DatasetFormatError, match="unexpected columns"):
        read_dataset_file(shuffled, "dataset.csv")


def test_csv_of_the_old_tool_reads_including_a_project_named_nan():
    buffer = io.StringIO()
    old_float_frame().to_csv(buffer, index=False)
    frame = read_dataset_file(buffer.getvalue().encode(), "dataset.csv")
    assert frame["name"].tolist()[1] == "nan"
    assert frame["status"].tolist() == ["valid", "empty", None, "valid"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.drop(columns=["url"]), "missing columns ['url']"),
        (lambda f: f.assign(extra=1), "unexpected columns ['extra']"),
        (lambda f: f.assign(last_day=[1.5, np.nan, np.nan, 1.0]), "'last_day' has values that are not whole"),
        (lambda f: f.assign(last_week=[-1.0, np.nan, np.nan, 1.0]), "'last_week' has values that are not whole"),
        (lambda f: f.assign(status=["valid", "bogus", None, "valid"]), "unknown values ['bogus']"),
        (lambda f: f.assign(updated_at=["x", None, None, 1.0]), "'updated_at' has 1 non-numeric"),
    ],
)
def test_bad_files_raise_naming_the_problem(change, message):
    with pytest.raises(DatasetFormatError, match=__import__("re").escape(message)):
        conform(change(old_float_frame()))


def test_corrupt_bytes_are_an_error_not_an_empty_dataset():
    data = dataset_to_parquet(conform(old_float_frame()))
    with pytest.raises(DatasetFormatError, match="dataset.parquet: cannot be read"):
        read_dataset_file(data[: len(data) // 2], "dataset.parquet")


def test_empty_dataset_has_the_schema():
    frame = empty_dataset()
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 0
    assert read_dataset_file(dataset_to_parquet(frame), "dataset.parquet").shape == (0, len(COLUMNS))


def test_normalize_matches_pep_503():
    names = ["Django", "zope.interface", "Foo__Bar-.baz", "A"]
    expected = ["django", "zope-interface", "foo-bar-baz", "a"]
    assert [normalize_name(n) for n in names] == expected
    assert normalize_names(pd.Series(names)).tolist() == expected
