"""Property tests (hypothesis) of the pure logic the published dataset rests on: name
normalization, migration of old files, the merge, and the publish guards."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypi_downloads_dagster.dataset.frames import merge_dataset, newest_fetches
from pypi_downloads_dagster.dataset.guards import PublishGuards, guard_figures
from pypi_downloads_dagster.services.pypi_index import build_project_index, is_valid_name
from pypi_downloads_dagster.dataset.schema import (
    COLUMNS,
    conform,
    dataset_to_parquet,
    normalize_name,
    normalize_names,
    read_dataset_file,
)

NOW = 1_760_000_000.0
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

name_chars = st.sampled_from("abcXYZ019._-")
project_names = st.text(name_chars, min_size=1, max_size=12).filter(is_valid_name)


@given(project_names)
@SETTINGS
def test_normalization_is_idempotent_lower_case_and_collapses_separators(name):
    once = normalize_name(name)
    assert normalize_name(once) == once
    assert once == once.lower() and not re.search(r"[-_.]{2,}|[_.]", once)
    assert normalize_names(pd.Series([name])).iloc[0] == once


@given(project_names, st.lists(st.sampled_from(["-", "_", "."]), min_size=1, max_size=3))
@SETTINGS
def test_spellings_that_differ_in_case_and_separators_normalize_alike(name, seps):
    parts = re.split(r"[-_.]+", name)
    other = seps[0].join(part.upper() for part in parts)
    if is_valid_name(other):
        assert normalize_name(other) == normalize_name(name)


counts = st.integers(min_value=0, max_value=10**12)


@st.composite
def old_layout_rows(draw):
    """A row of the earlier tool's file: float counts (NaN for null), no status."""
    fetched = draw(st.booleans())
    has_counts = fetched and draw(st.booleans())
    day, week, month = sorted(draw(st.tuples(counts, counts, counts))) if has_counts else (np.nan,) * 3
    return {
        "name": draw(project_names),
        "last_day": float(day), "last_week": float(week), "last_month": float(month),
        "updated_at": NOW - draw(st.integers(0, 10**7)) if fetched else np.nan,
    }


@given(st.lists(old_layout_rows(), max_size=20))
@SETTINGS
def test_migration_derives_status_and_survives_a_parquet_round_trip(rows):
    frame = pd.DataFrame(rows, columns=["name", "last_day", "last_week", "last_month", "updated_at"])
    frame.insert(1, "url", "https://pypi.org/simple/x/")
    migrated = conform(frame)
    assert list(migrated.columns) == list(COLUMNS)
    for row, status in zip(rows, migrated["status"]):
        expected = None if np.isnan(row["updated_at"]) else ("valid" if not np.isnan(row["last_month"]) else "empty")
        assert status == expected
    assert str(migrated["last_month"].dtype) == "Int64"
    back = read_dataset_file(dataset_to_parquet(migrated), "dataset.parquet")
    pd.testing.assert_frame_equal(back, migrated)
    csv = io.BytesIO()
    frame.to_csv(csv, index=False)
    pd.testing.assert_frame_equal(read_dataset_file(csv.getvalue(), "dataset.csv"), migrated)


@st.composite
def merge_case(draw):
    names = draw(st.lists(project_names, min_size=1, max_size=15, unique_by=normalize_name))
    index = build_project_index(names, fmt="json").projects
    existing_names = draw(st.lists(st.sampled_from(names + ["gone-1", "gone-2"]), unique_by=normalize_name, max_size=15))
    existing = conform(
        pd.DataFrame(
            {
                "name": existing_names,
                "url": [f"https://pypi.org/simple/{normalize_name(n)}/" for n in existing_names],
                "last_day": [1] * len(existing_names),
                "last_week": [2] * len(existing_names),
                "last_month": [3] * len(existing_names),
                "status": ["valid"] * len(existing_names),
                "updated_at": [NOW - draw(st.integers(0, 10**6)) for _ in existing_names],
            }
        )
    )
    fetched_rows = draw(
        st.lists(
            st.tuples(st.sampled_from(names), st.integers(0, 10**6), st.booleans()), max_size=20
        )
    )
    fetched = pd.DataFrame(
        {
            "normalized": [normalize_name(n) for n, _, _ in fetched_rows],
            "last_day": pd.array([5 if v else None for _, _, v in fetched_rows], dtype="Int64"),
            "last_week": pd.array([6 if v else None for _, _, v in fetched_rows], dtype="Int64"),
            "last_month": pd.array([7 if v else None for _, _, v in fetched_rows], dtype="Int64"),
            "status": ["valid" if v else "empty" for _, _, v in fetched_rows],
            "updated_at": [NOW - age for _, age, _ in fetched_rows],
        }
    )
    return index, existing, fetched


@given(merge_case())
@SETTINGS
def test_merge_is_one_row_per_project_newest_wins_and_idempotent(case):
    index, existing, fetched = case
    newest = newest_fetches([fetched])
    merged, stats = merge_dataset(existing, index, newest, now=NOW)
    assert sorted(normalize_names(merged["name"])) == sorted(index["normalized"])
    assert list(merged["name"]) == sorted(merged["name"])
    # Every row holds the newest of (published, fetched) for its project.
    by_name = merged.assign(n=normalize_names(merged["name"])).set_index("n")
    old = existing.assign(n=normalize_names(existing["name"])).set_index("n")["updated_at"]
    for row in newest.itertuples():
        expected = max(row.updated_at, old.get(row.normalized, -np.inf))
        assert by_name.loc[row.normalized, "updated_at"] == expected
    # Merging the same fetches onto the result changes nothing.
    again, stats_again = merge_dataset(merged, index, newest, now=NOW)
    pd.testing.assert_frame_equal(again, merged)
    assert stats_again.updated == 0


@given(merge_case(), st.floats(0, 1))
@SETTINGS
def test_guards_pass_an_unchanged_dataset_and_refuse_losing_more_than_the_share(case, share):
    index, existing, _ = case
    guards = PublishGuards(max_row_loss_share=share, max_counted_row_loss_share=1, max_month_total_drop_share=1)
    assert all(figure.passed for figure in guard_figures(existing, existing, guards))
    for keep in range(len(existing) + 1):
        figure = guard_figures(existing, existing.head(keep), guards)[0]
        lost = (len(existing) - keep) / len(existing) if len(existing) else 0
        assert figure.passed == (lost <= share + 1e-12), (keep, len(existing), share)


@given(st.lists(project_names, min_size=1, max_size=20), st.integers(0, 5))
@SETTINGS
def test_normalize_names_keeps_the_index_of_a_filtered_column(names, skip):
    column = pd.Series(names, index=range(100, 100 + len(names)))[skip:]
    normalized = normalize_names(column)
    assert list(normalized.index) == list(column.index)
    assert normalized.tolist() == [normalize_name(name) for name in column]
