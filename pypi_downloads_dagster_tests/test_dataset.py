import numpy as np
import pandas as pd
import pytest

from pypi_downloads_dagster.dataset.frames import DAY, merge_dataset, newest_fetches, plan_stale
from pypi_downloads_dagster.services.pypi_index import build_project_index
from pypi_downloads_dagster.dataset.schema import conform

NOW = 1_800_000_000.0


def projects(*names):
    return build_project_index(list(names), fmt="json").projects


def dataset(rows):
    """rows: (name, day, week, month, status, updated_at)"""
    frame = pd.DataFrame(rows, columns=["name", "last_day", "last_week", "last_month", "status", "updated_at"])
    frame.insert(1, "url", "https://pypi.org/simple/" + frame["name"].str.lower() + "/")
    return conform(frame)


def fetched(rows):
    frame = pd.DataFrame(rows, columns=["normalized", "last_day", "last_week", "last_month", "status", "updated_at"])
    for column in ("last_day", "last_week", "last_month"):
        frame[column] = frame[column].astype("Int64")
    return frame


def test_plan_orders_never_fetched_first_then_oldest_and_skips_fresh():
    index = projects("Django", "requests", "fresh", "old", "older", "brand-new")
    existing = dataset(
        [
            ("Django", 1, 2, 3, "valid", NOW - 40 * DAY),
            ("requests", 1, 2, 3, "valid", np.nan),
            ("fresh", 1, 2, 3, "valid", NOW - 1 * DAY),
            ("old", None, None, None, "empty", NOW - 31 * DAY),
            ("older", 1, 2, 3, "valid", NOW - 90 * DAY),
        ]
    )
    plan = plan_stale(index, existing, now=NOW, plan_id="P", chunk_size=2)
    assert plan["normalized"].tolist() == ["brand-new", "requests", "older", "django", "old"]
    assert plan["chunk"].tolist() == ["P-00000", "P-00000", "P-00001", "P-00001", "P-00002"]
    assert plan["name"].tolist()[3] == "Django"


def test_plan_cap_and_determinism():
    index = projects(*[f"pkg{i}" for i in range(25)])
    existing = dataset([])
    first = plan_stale(index, existing, now=NOW, plan_id="P", chunk_size=10, max_packages=22)
    again = plan_stale(index, existing, now=NOW, plan_id="P", chunk_size=10, max_packages=22)
    pd.testing.assert_frame_equal(first, again)
    assert len(first) == 22 and first["chunk"].nunique() == 3
    assert plan_stale(index, existing, now=NOW, plan_id="P", max_packages=0).empty


def test_plan_rejects_bad_settings():
    with pytest.raises(ValueError, match="chunk_size"):
        plan_stale(projects("a"), dataset([]), now=NOW, plan_id="P", chunk_size=0)


def test_merge_applies_newer_fetches_keeps_others_and_follows_the_index():
    index = projects("Django", "kept", "new-one", "Failed")
    existing = dataset(
        [
            ("Django", 1, 2, 3, "empty", NOW - 40 * DAY),  # the old tool's wrong 'empty'
            ("kept", 5, 6, 7, "valid", NOW - DAY),
            ("failed", 9, 9, 9, "valid", NOW - 50 * DAY),
            ("gone", 1, 1, 1, "valid", NOW - DAY),
        ]
    )
    fresh = fetched(
        [
            ("django", 10, 70, 300, "valid", NOW),
            ("kept", 0, 0, 0, "valid", NOW - 2 * DAY),  # older than the row: ignored
            ("new-one", None, None, None, "empty", NOW),
            ("left-index", 1, 1, 1, "valid", NOW),
        ]
    )
    merged, stats = merge_dataset(existing, index, newest_fetches([fresh]), now=NOW)
    assert merged["name"].tolist() == ["Django", "Failed", "kept", "new-one"]
    rows = merged.set_index("name")
    assert rows.loc["Django", ["last_day", "last_week", "last_month", "status"]].tolist() == [10, 70, 300, "valid"]
    assert rows.loc["kept", "last_month"] == 7
    assert rows.loc["Failed", "last_month"] == 9 and rows.loc["Failed", "updated_at"] == NOW - 50 * DAY
    assert rows.loc["new-one", "status"] == "empty" and pd.isna(rows.loc["new-one", "last_day"])
    assert rows.loc["Failed", "url"] == "https://pypi.org/simple/failed/"
    assert (stats.rows, stats.added, stats.removed, stats.updated, stats.fetched_not_on_index) == (4, 1, 1, 2, 1)


def test_merge_is_idempotent_and_newest_fetch_wins():
    index = projects("a", "b")
    first = fetched([("a", 1, 1, 1, "valid", NOW - 10)])
    second = fetched([("a", 2, 2, 2, "valid", NOW), ("b", None, None, None, "empty", NOW)])
    merged, _ = merge_dataset(dataset([]), index, newest_fetches([second, first]), now=NOW)
    assert merged["last_day"].tolist()[0] == 2
    again, stats = merge_dataset(merged, index, newest_fetches([first, second]), now=NOW)
    pd.testing.assert_frame_equal(again, merged)
    assert stats.updated == 0


def test_merge_with_nothing_fetched_returns_the_dataset_for_the_index():
    existing = dataset([("a", 1, 2, 3, "valid", NOW)])
    merged, stats = merge_dataset(existing, projects("a"), newest_fetches([]), now=NOW)
    pd.testing.assert_frame_equal(merged, existing)
    assert stats.updated == 0
