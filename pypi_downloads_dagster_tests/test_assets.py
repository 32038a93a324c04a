"""The assets, materialized with `dagster.materialize` on a test instance against the local fakes."""

import numpy as np
import pandas as pd
import pytest
import dagster as dg

from pypi_downloads_dagster.orchestration import assets
from pypi_downloads_dagster.cli import run_failure
from pypi_downloads_dagster.publishing.hub import LocalDatasetRepo
from pypi_downloads_dagster.orchestration.partitions import recent_stats_chunks
from pypi_downloads_dagster.orchestration.resources import ClickHouseSource, DatasetRepoResource, PypiIndexSource, PypistatsApi
from pypi_downloads_dagster.dataset.schema import DATASET_FILE, read_dataset_file
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

ALL_ASSETS = dg.load_assets_from_modules([assets])
PLAN = ["pypi_index", "existing_dataset", "stale_packages"]
PUBLISH = ["merged_dataset", "charts", "hf_dataset_card"]
DAY = 86_400


def resources(index, stats, local_dir):
    fast = dict(retry_attempts=3, retry_initial_wait=0.01, retry_max_wait=0.02, timeout=5)
    return {
        "index_source": PypiIndexSource(url=index.index_url, **fast),
        "pypistats": PypistatsApi(url=stats.api_url, max_per_second=1000, max_per_minute=60000, **fast),
        "dataset_repo": DatasetRepoResource(local_dir=str(local_dir)),
        "clickhouse": ClickHouseSource(),  # the pypistats source: ClickHouse is not asked
    }


def run(selection, res, instance, partition_key=None, run_config=None, raise_on_error=True):
    return dg.materialize(
        ALL_ASSETS, selection=selection, resources=res, instance=instance, partition_key=partition_key,
        run_config=run_config, raise_on_error=raise_on_error,
    )


def card_metadata(result):
    (card,) = [m for m in result.asset_materializations_for_node("publish") if m.asset_key.path == ["hf_dataset_card"]]
    return card.metadata


def failure(result):
    assert not result.success
    return run_failure(result)


def seed_old_csv(folder, rows):
    """The earlier tool's file: float counts, no status column."""
    frame = pd.DataFrame(rows, columns=["name", "url", "last_day", "last_week", "last_month", "updated_at"])
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "dataset.csv", index=False)


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def test_one_cycle_plans_fetches_chunks_and_publishes(tmp_path, instance):
    now = pd.Timestamp.now(tz="UTC").timestamp()
    folder = tmp_path / "repo"
    seed_old_csv(
        folder,
        [
            ("Django", "https://pypi.org/simple/django/", np.nan, np.nan, np.nan, now - 40 * DAY),  # the old tool's wrong 'empty'
            ("fresh", "https://pypi.org/simple/fresh/", 1.0, 2.0, 3.0, now - DAY),
            ("gone", "https://pypi.org/simple/gone/", 1.0, 1.0, 1.0, now - DAY),
        ],
    )
    projects = ["Django", "fresh", "new.pkg", "Unknown", "flaky"]
    counts = {"django": (10, 70, 300), "fresh": (9, 9, 9), "new-pkg": (1, 2, 3), "flaky": (5, 5, 5)}
    with FakeIndex(projects) as index, FakePypistats(counts, per_second=1000, per_minute=60000) as stats:
        stats.fail("flaky", [500] * 10)
        res = resources(index, stats, folder)
        plan = run(PLAN, res, instance, run_config={"ops": {"stale_packages": {"config": {"chunk_size": 2}}}})
        keys = instance.get_dynamic_partitions(recent_stats_chunks.name)
        assert len(keys) == 2
        planned = plan.output_for_node("stale_packages")
        assert sorted(planned["normalized"]) == ["django", "flaky", "new-pkg", "unknown"]

        checks = {}
        for key in keys:
            chunk = run(["recent_stats"], res, instance, partition_key=key)
            (evaluation,) = chunk.get_asset_check_evaluations()
            checks[key] = evaluation
        # A fresh row is not fetched; it is asked for once per chunk as the canary (the published
        # project with the most downloads), which proves the stats API is the right one.
        assert len(stats.requests_for("fresh")) == len(keys)

        published = run(PUBLISH, res, instance)
    dataset = read_dataset_file((folder / DATASET_FILE).read_bytes(), DATASET_FILE).set_index("name")
    assert list(dataset.index) == sorted(projects)
    assert dataset.loc["Django", ["last_day", "last_week", "last_month", "status"]].tolist() == [10, 70, 300, "valid"]
    assert dataset.loc["fresh", "last_month"] == 3, "a fresh row keeps its values"
    assert dataset.loc["new.pkg", "status"] == "valid" and dataset.loc["new.pkg", "url"] == "https://pypi.org/simple/new-pkg/"
    assert dataset.loc["Unknown", "status"] == "empty" and pd.isna(dataset.loc["Unknown", "last_month"])
    assert pd.isna(dataset.loc["flaky", "status"]) and pd.isna(dataset.loc["flaky", "updated_at"]), "a failed fetch stays as it was"
    for name in ("README.md", "download_distribution.png", "top_packages.png"):
        assert (folder / name).is_file()
    meta = card_metadata(published)
    assert meta["committed"].value is True and meta["rows"].value == 5

    # The check of the chunk with the failing package warns and names it; the other chunk passes.
    flaky_key = planned.set_index("normalized").loc["flaky", "chunk"]
    assert not checks[flaky_key].passed and checks[flaky_key].severity == dg.AssetCheckSeverity.WARN
    assert "flaky" in checks[flaky_key].metadata["failures"].value
    assert all(check.passed for key, check in checks.items() if key != flaky_key)


def test_publishing_again_without_new_data_commits_nothing(tmp_path, instance):
    folder = tmp_path / "repo"
    with FakeIndex(["a", "b"]) as index, FakePypistats({"a": (1, 2, 3)}, per_second=1000, per_minute=60000) as stats:
        res = resources(index, stats, folder)
        run(PLAN, res, instance)
        for key in instance.get_dynamic_partitions(recent_stats_chunks.name):
            run(["recent_stats"], res, instance, partition_key=key)
        first = run(PUBLISH, res, instance)
        revision = LocalDatasetRepo(folder).head()
        second = run(PUBLISH, res, instance)
    assert card_metadata(first)["committed"].value is True
    assert card_metadata(second)["committed"].value is False
    assert LocalDatasetRepo(folder).head() == revision


def test_a_shrinking_index_is_refused_and_the_dataset_is_kept(tmp_path, instance):
    now = pd.Timestamp.now(tz="UTC").timestamp()
    folder = tmp_path / "repo"
    seed_old_csv(folder, [(f"p{i}", f"https://pypi.org/simple/p{i}/", 1.0, 1.0, 1.0, now) for i in range(100)])
    before = (folder / "dataset.csv").read_bytes()
    with FakeIndex([f"p{i}" for i in range(50)]) as index, FakePypistats({}, per_second=1000, per_minute=60000) as stats:
        res = resources(index, stats, folder)
        plan = run(PLAN, res, instance, raise_on_error=False)
        result = run(PUBLISH, res, instance, raise_on_error=False)
    assert "the index lists 50 projects but the published dataset has 100 rows" in failure(plan)
    assert "rows: 100 -> 50" in failure(result), "the publish refuses it as well"
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.csv"] and (folder / "dataset.csv").read_bytes() == before


def test_an_unreadable_existing_dataset_fails_the_run(tmp_path, instance):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / DATASET_FILE).write_bytes(b"PAR1 this is not parquet")
    with FakeIndex(["a"]) as index, FakePypistats({}, per_second=1000, per_minute=60000) as stats:
        result = run(PLAN, resources(index, stats, folder), instance, raise_on_error=False)
    assert "existing dataset is unreadable" in failure(result)
    assert instance.get_dynamic_partitions(recent_stats_chunks.name) == []


def test_a_chunk_key_from_another_plan_fails_clearly(tmp_path, instance):
    with FakeIndex(["a"]) as index, FakePypistats({}, per_second=1000, per_minute=60000) as stats:
        res = resources(index, stats, tmp_path / "repo")
        run(PLAN, res, instance)
        instance.add_dynamic_partitions(recent_stats_chunks.name, ["19990101T000000-00000"])
        result = run(["recent_stats"], res, instance, partition_key="19990101T000000-00000", raise_on_error=False)
    assert "has no recorded packages" in failure(result) and stats.log == []
