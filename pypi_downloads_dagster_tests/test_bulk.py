"""The bulk counts source end to end: ClickHouse (chDB behind ClickHouse's HTTP interface), the
pypistats fake for the cross-check, the index fake and a local dataset repo. Every published row
is checked against a pandas computation of pypistats' definition over the same rows."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import time

import dagster as dg
import pandas as pd
import pytest

pytest.importorskip("chdb", reason="the fake ClickHouse needs chDB: pip install -e '.[test]'")

from pypi_downloads_dagster.dataset.bulk import (  # noqa: E402
    DayNotLoaded,
    bulk_fetched,
    check_day_loaded,
    cross_check,
    history_days,
    history_files,
    history_from_dataset,
    merge_history,
    read_history_file,
    sample_across_popularity,
)
from pypi_downloads_dagster.dataset.schema import normalize_name, read_dataset_file  # noqa: E402
from pypi_downloads_dagster.orchestration import assets  # noqa: E402
from pypi_downloads_dagster.orchestration.resources import ClickHouseSource, DatasetRepoResource, PypiIndexSource, PypistatsApi  # noqa: E402
from pypi_downloads_dagster.services.clickhouse import last_complete_day  # noqa: E402
from pypi_downloads_dagster.services.pypistats import RecentCounts, counts_day_of  # noqa: E402
from pypi_downloads_dagster_tests.fakes.clickhouse import FakeClickHouse, synthetic_downloads  # noqa: E402
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex  # noqa: E402
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats  # noqa: E402
from pypi_downloads_dagster_tests.test_clickhouse import reference_history, reference_recent  # noqa: E402

ALL_ASSETS = dg.load_assets_from_modules([assets])
BULK = ["pypi_index", "bulk_counts", "merged_dataset", "charts", "hf_dataset_card"]
ONLY_ON_INDEX = ["Never-Downloaded", "quiet.project"]


# -- plain functions -------------------------------------------------------------------------------


def test_bulk_rows_cover_the_index_valid_or_empty():
    projects = pd.DataFrame({"normalized": ["a", "b", "c"]})
    counts = pd.DataFrame({"normalized": ["a", "c", "not-listed"], "last_day": [0, 5, 1], "last_week": [1, 6, 1], "last_month": [2, 7, 1]})
    frame, not_on_index = bulk_fetched(projects, counts, fetched_at=1_800_000_000.0)
    rows = frame.set_index("normalized")
    assert list(rows.index) == ["a", "b", "c"] and not_on_index == 1
    assert rows.loc["a", "status"] == "valid" and rows.loc["a", "last_day"] == 0 and rows.loc["a", "last_month"] == 2
    assert rows.loc["b", "status"] == "empty" and pd.isna(rows.loc["b", "last_month"])
    assert str(rows["last_month"].dtype) == "Int64" and (rows["updated_at"] == 1_800_000_000.0).all()


def test_a_day_not_loaded_yet_is_refused():
    d = dt.date(2026, 11, 24)
    totals = pd.DataFrame({"date": [d - dt.timedelta(days=1), d], "downloads": [1000, 990]})
    check_day_loaded(totals, d)
    with pytest.raises(DayNotLoaded, match="has not loaded 2026-11-24"):
        check_day_loaded(totals.iloc[:1], d)  # nothing for D yet
    with pytest.raises(DayNotLoaded):
        check_day_loaded(pd.DataFrame({"date": [d - dt.timedelta(days=1), d], "downloads": [1000, 300]}), d)  # half loaded


def test_the_sample_spans_popularity_and_is_deterministic():
    frame = pd.DataFrame({"normalized": [f"p{i}" for i in range(1000)], "last_month": list(range(1000)), "status": ["valid"] * 900 + ["empty"] * 100})
    sample = sample_across_popularity(frame, 50, seed=3)
    assert len(sample) == 50 and len(set(sample)) == 50 and sample == sample_across_popularity(frame, 50, seed=3)
    months = sorted(int(name[1:]) for name in sample if int(name[1:]) < 900)
    assert months[0] < 30 and months[-1] > 870  # from the least to the most downloaded
    assert sum(int(name[1:]) >= 900 for name in sample) == 5  # a tenth from the empty ones
    assert sample_across_popularity(frame, 0, seed=3) == []


def test_cross_check_counts_exact_agreement_and_the_median_difference():
    bulk = pd.DataFrame(
        {"normalized": ["a", "b", "c", "d"], "last_day": pd.array([1, 2, 3, None], dtype="Int64"), "last_week": pd.array([1, 2, 3, None], dtype="Int64"),
         "last_month": pd.array([10, 20, 100, None], dtype="Int64"), "status": ["valid", "valid", "valid", "empty"]}
    )
    answers = [
        RecentCounts("a", 1, 1, 10, "valid", 0.0),
        RecentCounts("b", 2, 2, 20, "valid", 0.0),
        RecentCounts("c", 3, 3, 90, "valid", 0.0),  # 10% apart
        RecentCounts("d", None, None, None, "empty", 0.0),
    ]
    check = cross_check(bulk, answers, sampled=5, failed=1)
    assert (check.compared, check.exact, check.failed) == (4, 3, 1)
    assert check.median_relative_difference == 0.0 and check.exact_share == 0.75 and not check.passed
    assert "c" in check.differences and "3 of 4 sampled projects agree exactly" in check.sentence()
    assert math.isnan(cross_check(bulk, [], 5, 5).exact_share) and not cross_check(bulk, [], 5, 5).passed


def test_history_files_one_per_day_sorted_and_typed():
    d = dt.date(2026, 11, 23)
    history = pd.DataFrame({"date": [d, d, d + dt.timedelta(days=1)], "name": ["b", "a", "a"], "downloads": [5, 7, 0]})
    files = history_files(history, [d, d + dt.timedelta(days=1)])
    assert sorted(files) == ["history/2026-11-23.parquet", "history/2026-11-24.parquet"]
    first = read_history_file(files["history/2026-11-23.parquet"])
    assert list(first["name"]) == ["a", "b"] and list(first["downloads"]) == [7, 5] and first["date"].iloc[0] == d
    assert len(read_history_file(files["history/2026-11-24.parquet"])) == 0  # a day with none: an empty file
    assert history_days(["README.md", *files, "history/notes.txt", "history/x.parquet"]) == [d, d + dt.timedelta(days=1)]


def test_pypistats_history_holds_what_was_fetched_that_counts_day_and_never_loses_a_row():
    noon = dt.datetime(2026, 11, 24, 12, tzinfo=dt.timezone.utc).timestamp()  # counts of the 23rd
    frame = pd.DataFrame(
        {"name": ["Alpha", "beta", "Gamma", "delta"], "last_day": pd.array([3, 0, 9, None], dtype="Int64"),
         "status": ["valid", "valid", "valid", "empty"], "updated_at": [noon, noon, noon - 86_400, noon]}
    )
    day = dt.date(2026, 11, 23)
    assert counts_day_of(noon) == day
    seen = history_from_dataset(frame, day, counts_day_of)
    assert list(seen["name"]) == ["alpha"] and list(seen["downloads"]) == [3]  # beta had 0, Gamma is another day
    merged = merge_history(pd.DataFrame({"date": [day], "name": ["zeta"], "downloads": [1]}), seen)
    assert sorted(merged["name"]) == ["alpha", "zeta"]


# -- against the engine ----------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path, load_clickhouse, clickhouse_engine):
    """ClickHouse loaded with synthetic rows up to yesterday, an index of their projects plus two
    with no downloads, and pypistats answering the definition's counts (one sampled project off)."""
    day = last_complete_day(time.time())
    rows = synthetic_downloads(day, projects=120, seed=11)
    load_clickhouse(rows)
    expected = reference_recent(rows, day)
    display = sorted(set(rows["project"]).union(ONLY_ON_INDEX), key=normalize_name)
    names = list({normalize_name(n): n for n in display}.values())
    stats = {row.normalized: (int(row.last_day), int(row.last_week), int(row.last_month)) for row in expected.itertuples()}
    with FakeClickHouse(clickhouse_engine) as clickhouse, FakeIndex(names) as index, FakePypistats(stats, per_second=1000, per_minute=60000) as pypistats:
        yield {"day": day, "rows": rows, "expected": expected, "names": names, "clickhouse": clickhouse, "index": index,
               "pypistats": pypistats, "repo": tmp_path / "repo"}


def resources(world, sample=20):
    fast = dict(retry_attempts=3, retry_initial_wait=0.01, retry_max_wait=0.02, timeout=5)
    return {
        "index_source": PypiIndexSource(url=world["index"].index_url, **fast),
        "pypistats": PypistatsApi(url=world["pypistats"].api_url, max_per_second=1000, max_per_minute=60000, **fast),
        "dataset_repo": DatasetRepoResource(local_dir=str(world["repo"])),
        "clickhouse": ClickHouseSource(enabled=True, url=world["clickhouse"].url, cross_check_sample=sample),
    }


def test_a_bulk_cycle_publishes_every_project_with_the_definitions_counts(world):
    with dg.instance_for_test() as instance:
        result = dg.materialize(ALL_ASSETS, selection=BULK, resources=resources(world), instance=instance)
        bulk_meta = result.asset_materializations_for_node("bulk_counts")[0].metadata
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    published = read_dataset_file((world["repo"] / "dataset.parquet").read_bytes(), "dataset.parquet")
    assert sorted(published["name"], key=normalize_name) == world["names"]
    expected = world["expected"].set_index("normalized")
    for row in published.itertuples():
        key = normalize_name(row.name)
        if key in expected.index:
            assert row.status == "valid", row
            assert (row.last_day, row.last_week, row.last_month) == tuple(int(expected.loc[key, c]) for c in ("last_day", "last_week", "last_month")), row
        else:
            assert row.status == "empty" and pd.isna(row.last_month), row
    assert {normalize_name(n) for n in ONLY_ON_INDEX} <= set(published.loc[published["status"] == "empty", "name"].map(normalize_name))
    assert bulk_meta["day"].value == str(world["day"]) and bulk_meta["projects"].value == len(world["names"])
    check = checks["agrees_with_pypistats"]
    assert check.passed and check.metadata["compared"].value == 20 and check.metadata["exact_share"].value == 1.0
    assert len(world["pypistats"].log) == 20  # the sample, nothing more: the counts came in one query
    card = (world["repo"] / "README.md").read_text()
    assert "20 of 20 sampled projects agree exactly" in card and "ClickPy" in card
    assert (world["repo"] / "download_trend.png").read_bytes()[:4] == b"\x89PNG"


def test_a_cross_check_disagreement_warns_but_publishes(world):
    first = world["expected"].iloc[-1]
    world["pypistats"].counts[first.normalized] = (int(first.last_day), int(first.last_week), int(first.last_month) * 3 + 1)
    with dg.instance_for_test() as instance:
        result = dg.materialize(ALL_ASSETS, selection=BULK, resources=resources(world, sample=len(world["names"])), instance=instance)
        (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "agrees_with_pypistats"]
    assert result.success and check.metadata["exact_share"].value < 1.0
    assert first.normalized in check.metadata["differences"].value


def test_a_day_clickpy_has_not_loaded_fails_and_publishes_nothing(world, load_clickhouse):
    rows = world["rows"]
    load_clickhouse(rows[rows["date"] < world["day"]])
    with dg.instance_for_test() as instance:
        result = dg.materialize(ALL_ASSETS, selection=BULK, resources=resources(world), instance=instance, raise_on_error=False)
    assert not result.success and not (world["repo"] / "dataset.parquet").exists()
    from pypi_downloads_dagster.cli import run_failure

    assert "DayNotLoaded" in run_failure(result) and "try again later" in run_failure(result)


def test_history_for_a_range_is_one_run_and_a_commit_per_batch_equal_to_the_definition(world):
    from pypi_downloads_dagster.definitions import build_definitions

    day = world["day"]
    start = day - dt.timedelta(days=32)  # 33 days: a batch of 31, then one of 2
    env = {"COUNTS_SOURCE": "clickhouse", "CLICKHOUSE_URL": world["clickhouse"].url, "PYPI_DOWNLOADS_DIR": str(world["repo"])}
    with dg.instance_for_test() as instance:
        # Built inside the instance's context: Dagster ties definitions state to the current instance.
        job = build_definitions(env).resolve_job_def("publish_history")
        result = job.execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": str(start), "dagster/asset_partition_range_end": str(day)},
        )
        assert result.success
        (meta,) = [m.metadata for m in result.asset_materializations_for_node("download_history")][:1] or [None]
    files = sorted(p.name for p in (world["repo"] / "history").iterdir())
    assert files == [f"{start + dt.timedelta(days=i)}.parquet" for i in range(33)]
    expected = reference_history(world["rows"], start, day)
    for offset in range(33):
        d = start + dt.timedelta(days=offset)
        got = read_history_file((world["repo"] / "history" / f"{d}.parquet").read_bytes())
        want = expected[expected["date"] == d]
        assert list(got["name"]) == list(want["name"]) and list(got["downloads"]) == list(want["downloads"]), d
    assert meta["days"].value == 33 and meta["commits"].value == 2


def test_sync_with_the_bulk_source_publishes_every_project_and_the_history_of_the_day(world, tmp_path):
    from pypi_downloads_dagster_tests.test_cli import CLI

    env = {
        **__import__("os").environ,
        "COUNTS_SOURCE": "clickhouse",
        "CLICKHOUSE_URL": world["clickhouse"].url,
        "PYPI_INDEX_URL": world["index"].index_url,
        "PYPISTATS_API_URL": world["pypistats"].api_url,
        "PYPISTATS_MAX_PER_SECOND": "1000",
        "PYPISTATS_MAX_PER_MINUTE": "60000",
        "CROSS_CHECK_SAMPLE": "10",
        "PYPI_DOWNLOADS_DIR": str(world["repo"]),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "home").mkdir()
    result = subprocess.run([*CLI, "sync"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"history {world['day']}: committed" in result.stdout
    assert "10 of 10 sampled projects agree exactly" in result.stdout
    published = read_dataset_file((world["repo"] / "dataset.parquet").read_bytes(), "dataset.parquet")
    assert len(published) == len(world["names"]) and published["status"].notna().all()
    assert (world["repo"] / "history" / f"{world['day']}.parquet").exists()
    card = (world["repo"] / "README.md").read_text()
    assert "history/*.parquet" in card
