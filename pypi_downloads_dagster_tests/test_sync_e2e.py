"""`pypi-downloads-dagster sync` end to end: the real command in a subprocess, real Dagster runs in a
temporary DAGSTER_HOME, against the local index, pypistats (rate-limited) and Hub fakes."""

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pypi_downloads_dagster.dataset.schema import normalize_name, read_dataset_file
from pypi_downloads_dagster_tests.fakes.env import service_env
from pypi_downloads_dagster_tests.fakes.hub import FakeHub
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

pytestmark = pytest.mark.e2e

REPO = "tester/pypi-downloads"
TOKEN = "hf_e2e_secret_token"
DAY = 86_400
NOW = time.time()

# (name, last_day, last_week, last_month, updated_at) in the earlier tool's float layout, no status.
OLD_ROWS = [
    ("Django", np.nan, np.nan, np.nan, NOW - 45 * DAY),  # recorded 'empty' by the old name bug
    ("Flask", 1.0, 2.0, 3.0, NOW - 2 * DAY),  # fresh: keeps its values, never requested
    ("zope.interface", 5.0, 6.0, 7.0, NOW - 31 * DAY),  # stale
    ("left-pypi", 9.0, 9.0, 9.0, NOW - 40 * DAY),  # no longer on the index
    ("numpy", 10.0, 20.0, 30.0, np.nan),  # odd old row: counts but never fetched
    ("no-data", np.nan, np.nan, np.nan, NOW - 60 * DAY),  # stale 'empty'
]
INDEX = ["Django", "Flask", "zope.interface", "numpy", "no-data", "Foo_Bar", "requests", "PyYAML", "flaky", "broken"]
STATS = {
    "django": (1000, 7000, 30000),
    "flask": (111, 222, 333),
    "zope-interface": (50, 350, 1500),
    "numpy": (900, 6300, 27000),
    "foo-bar": (1, 7, 30),
    "requests": (2000, 14000, 60000),
    "pyyaml": (800, 5600, 24000),
    "flaky": (3, 21, 90),
    "broken": (4, 28, 120),
}  # "no-data" is unknown to pypistats: 404 -> 'empty'


def old_dataset_parquet() -> bytes:
    frame = pd.DataFrame(OLD_ROWS, columns=["name", "last_day", "last_week", "last_month", "updated_at"])
    frame.insert(1, "url", ["https://pypi.org/simple/" + normalize_name(n) + "/" for n in frame["name"]])
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@pytest.fixture
def services(tmp_path):
    hub = FakeHub(token=TOKEN)
    hub.create_dataset_repo(REPO, {"dataset.parquet": old_dataset_parquet()})
    # The real limits (5/s, 30/min per IP) with windows scaled down to 0.1 s and 1 s.
    with FakeIndex(INDEX) as index, FakePypistats(STATS, per_second=5, per_minute=30, second_window=0.1, minute_window=1.0) as stats, hub.serve() as hub_server:
        env = service_env(
            index=index, stats=stats, hub_url=hub_server.url, repo=REPO, token=TOKEN,
            dagster_home=tmp_path / "dagster_home", max_per_second=40, max_per_minute=1500,
        )
        (tmp_path / "dagster_home").mkdir()
        # As README.md sets it up: the shipped instance config in DAGSTER_HOME.
        shutil.copy(Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml", tmp_path / "dagster_home")
        yield index, stats, hub, env


def sync(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "pypi_downloads_dagster.cli", "sync", "--chunk-size", "4", *args],
        env=env, capture_output=True, text=True, timeout=240,
    )


def published(hub):
    return read_dataset_file(hub.files(REPO)["dataset.parquet"], "dataset.parquet").set_index("name")


def requested(stats):
    return sorted(entry.path.split("/")[3] for entry in stats.log)


def test_sync_migrates_fetches_and_publishes_then_has_nothing_to_do(services):
    index, stats, hub, env = services
    stats.fail("flaky", [500, 503])  # recovers on retry
    # A 200 that is not JSON on every attempt: fails after retries, the row stays as it was.
    stats.garbage("broken", times=6)
    commits_before = len(hub.commits(REPO))

    first = sync(env)
    assert first.returncode == 0, first.stdout + first.stderr
    summary = first.stdout.strip().splitlines()[-1]
    assert summary.startswith("[sync] summary:") and "1 failed" in summary and "published" in summary

    # One commit with the dataset, the card and both charts.
    commits = hub.commits(REPO)
    assert len(commits) == commits_before + 1
    assert commits[-1].changed == {"dataset.parquet", "README.md", "download_distribution.png", "top_packages.png"}
    assert "configs" in hub.files(REPO)["README.md"].decode()

    # Requests: every stale project once by its normalized name (plus retries of 'flaky' and 'broken'),
    # never the fresh one; and each of the 3 chunks first asks for the canary, the published project
    # with the most downloads (numpy, 30).
    assert requested(stats) == sorted(
        ["django", "zope-interface", "numpy", "no-data", "foo-bar", "requests", "pyyaml"]
        + ["flaky"] * 3 + ["broken"] * 6 + ["numpy"] * 3
    )

    # Row by row.
    data = published(hub)
    assert list(data.index) == sorted(INDEX)
    for name in INDEX:
        row = data.loc[name]
        key = normalize_name(name)
        assert row["url"] == f"https://pypi.org/simple/{key}/"
        if name == "Flask":
            assert [row.last_day, row.last_week, row.last_month, row.status] == [1, 2, 3, "valid"]
            assert row.updated_at == pytest.approx(NOW - 2 * DAY)
        elif name == "broken":
            assert pd.isna(row.status) and pd.isna(row.updated_at) and pd.isna(row.last_month)
        elif name == "no-data":
            assert row.status == "empty" and pd.isna(row.last_day) and row.updated_at > NOW
        else:
            assert [row.last_day, row.last_week, row.last_month, row.status] == [*STATS[key], "valid"], name
            assert row.updated_at > NOW
    assert "left-pypi" not in data.index
    assert str(data["last_day"].dtype) == "Int64"

    # Next sync: only the failed package is stale; it answers now and is published.
    log_size = len(stats.log)
    second = sync(env)
    assert second.returncode == 0, second.stdout + second.stderr
    # The canary now is requests (60,000 a month); then the one stale package.
    assert [entry.path.split("/")[3] for entry in stats.log[log_size:]] == ["requests", "broken"]
    assert published(hub).loc["broken", "last_month"] == 120
    assert len(hub.commits(REPO)) == commits_before + 2

    # And right after: nothing to request, nothing to commit.
    log_size = len(stats.log)
    third = sync(env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert len(stats.log) == log_size
    assert len(hub.commits(REPO)) == commits_before + 2
    assert "nothing committed" in third.stdout.strip().splitlines()[-1]

    # Never a secret in what the user sees.
    for result in (first, second, third):
        assert TOKEN not in result.stdout + result.stderr


def test_a_failed_read_of_the_existing_dataset_publishes_nothing(services):
    index, stats, hub, env = services
    head = hub.head(REPO)
    hub.fail_next("GET", "/resolve/", 500, times=50)
    result = sync(env)
    assert result.returncode == 1
    assert "FAILED" in result.stdout.strip().splitlines()[-1]
    assert "existing_dataset" in result.stdout and "DatasetReadError" in result.stdout
    assert hub.head(REPO) == head and len(stats.log) == 0
