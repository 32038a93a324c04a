"""The fault matrix of "nothing can damage the published dataset": for each fault at a boundary
(Hub, pypistats, index, clock, concurrent writers), the run's outcome and the repo head afterwards:
unchanged, or a correct new dataset. Real Dagster runs against the local fakes, through the real
huggingface_hub client, on a fresh HF_HOME.
"""

from __future__ import annotations

import io
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
import dagster as dg

from pypi_downloads_dagster.orchestration import assets
from pypi_downloads_dagster.cli import run_failure
from pypi_downloads_dagster.dataset.store import FetchStore
from pypi_downloads_dagster.orchestration.partitions import recent_stats_chunks
from pypi_downloads_dagster.orchestration.resources import ClickHouseSource, DatasetRepoResource, PypiIndexSource, PypistatsApi
from pypi_downloads_dagster.dataset.schema import DATASET_FILE, LEGACY_DATASET_FILE, conform, dataset_to_parquet, read_dataset_file
from pypi_downloads_dagster_tests.fakes.hub import FakeHub
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

ALL_ASSETS = dg.load_assets_from_modules([assets])
PLAN = ["pypi_index", "existing_dataset", "stale_packages"]
PUBLISH = ["merged_dataset", "charts", "hf_dataset_card"]
REPO = "tester/pypi-downloads"
TOKEN = "hf_matrix_secret_token"
DAY = 86_400
NOW = time.time()
N = 40
NAMES = [f"pkg{i:02d}" for i in range(N)]
FRESH_COUNTS = {name: (i + 2, 7 * (i + 2), 30 * (i + 2)) for i, name in enumerate(NAMES)}


def published_frame(names=NAMES, *, age_days: float = 40, scale: int = 1) -> pd.DataFrame:
    """Every project valid with counts, fetched `age_days` ago (stale at 30)."""
    return conform(
        pd.DataFrame(
            {
                "name": names,
                "url": [f"https://pypi.org/simple/{n}/" for n in names],
                "last_day": [scale * (i + 1) for i in range(len(names))],
                "last_week": [scale * 7 * (i + 1) for i in range(len(names))],
                "last_month": [scale * 30 * (i + 1) for i in range(len(names))],
                "status": ["valid"] * len(names),
                "updated_at": [NOW - age_days * DAY] * len(names),
            }
        )
    )


class World:
    """The three fakes, a test instance and helpers to run the cycle's jobs as the daemon would."""

    def __init__(self, hub: FakeHub, hub_url: str, index: FakeIndex, stats: FakePypistats, instance):
        self.hub, self.hub_url, self.index, self.stats, self.instance = hub, hub_url, index, stats, instance
        self.index_url = index.index_url
        self.stats_url = stats.api_url
        self.repo_resource: DatasetRepoResource = DatasetRepoResource(repo_id=REPO, token=TOKEN, endpoint=hub_url)

    def resources(self) -> dict:
        fast = dict(retry_attempts=2, retry_initial_wait=0.01, retry_max_wait=0.02, timeout=5)
        return {
            "index_source": PypiIndexSource(url=self.index_url, **fast),
            "pypistats": PypistatsApi(url=self.stats_url, max_per_second=1000, max_per_minute=60000, **fast),
            "dataset_repo": self.repo_resource,
            "clickhouse": ClickHouseSource(),
        }

    def run(self, selection, partition_key=None, config=None, tags=None):
        return dg.materialize(
            ALL_ASSETS, selection=selection, resources=self.resources(), instance=self.instance,
            partition_key=partition_key, run_config=config, raise_on_error=False, tags=tags,
        )

    def plan(self, **config):
        return self.run(PLAN, config={"ops": {"stale_packages": {"config": config}}} if config else None)

    def fetch(self) -> list:
        return [self.run(["recent_stats"], partition_key=key) for key in self.keys()]

    def publish(self, **config):
        return self.run(PUBLISH, config={"ops": {"publish": {"config": config}}} if config else None)

    def keys(self) -> list[str]:
        return self.instance.get_dynamic_partitions(recent_stats_chunks.name)

    def published(self) -> pd.DataFrame:
        return read_dataset_file(self.hub.files(REPO)[DATASET_FILE], DATASET_FILE)

    def store(self) -> FetchStore:
        return FetchStore.in_storage(self.instance.storage_directory())


@pytest.fixture
def world(tmp_path, monkeypatch, no_backoff):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # a fresh cache: the cold case
    hub = FakeHub(token=TOKEN)
    with hub.serve() as server, FakeIndex(NAMES) as index, FakePypistats(FRESH_COUNTS, per_second=1000, per_minute=60000) as stats:
        with dg.instance_for_test() as instance:
            yield World(hub, server.url, index, stats, instance)


def seed(world: World, frame: pd.DataFrame | None = None, **files) -> str:
    contents = {DATASET_FILE: dataset_to_parquet(published_frame() if frame is None else frame), **files}
    return world.hub.create_dataset_repo(REPO, contents)


def failed_with(result, text: str) -> str:
    assert not result.success, "the run should have failed"
    message = run_failure(result)
    assert text in message, message
    return message


# ---- the whole cycle, for reference: a correct new dataset ------------------------------------


def test_a_healthy_cycle_publishes_fresh_counts_on_the_head(world):
    head = seed(world)
    assert world.plan().success
    assert all(result.success for result in world.fetch())
    assert world.publish().success
    assert world.hub.head(REPO) != head
    published = world.published().set_index("name")
    assert published.loc["pkg03", ["last_day", "last_week", "last_month"]].tolist() == list(FRESH_COUNTS["pkg03"])
    assert (published["updated_at"] > NOW - 60).all()
    # Pandas reads counts back as integers, not floats.
    assert str(pq.read_table(io.BytesIO(world.hub.files(REPO)[DATASET_FILE])).schema.field("last_month").type) == "int64"


# ---- Hub ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429, 403])
def test_hub_read_failure_fails_the_plan_and_changes_nothing(world, status):
    """Finding 1: a failed metadata HEAD on a cold cache used to read as "no dataset"."""
    head = seed(world)
    world.hub.fail_next("HEAD", "/resolve/", status, times=20)
    result = world.plan()
    failed_with(result, "DatasetReadError")
    assert world.keys() == [] and world.hub.head(REPO) == head


def test_hub_read_failure_at_publish_time_commits_nothing(world):
    """Finding 1 at the publish: the publish reads the head itself and fails; the repo keeps its dataset."""
    head = seed(world)
    assert world.plan().success and all(r.success for r in world.fetch())
    world.hub.fail_next("HEAD", "/resolve/", 500, times=20)
    failed_with(world.publish(), "DatasetReadError")
    assert world.hub.head(REPO) == head


def test_legacy_csv_is_deleted_in_the_same_commit_as_the_parquet(world):
    """Finding 2: the frozen dataset.csv stayed beside dataset.parquet."""
    legacy = published_frame().to_csv(index=False).encode()
    seed(world, **{LEGACY_DATASET_FILE: legacy})
    assert world.plan().success and all(r.success for r in world.fetch())
    assert world.publish().success
    commits = world.hub.commits(REPO)
    assert LEGACY_DATASET_FILE not in world.hub.files(REPO)
    assert DATASET_FILE in commits[-1].changed and LEGACY_DATASET_FILE not in commits[-1].files


def test_parquet_read_failure_never_falls_back_to_the_csv(world):
    """Finding 2: a failed parquet read used to fall back to the frozen CSV."""
    old_csv = published_frame(scale=1).to_csv(index=False).encode()
    head = seed(world, published_frame(scale=1000), **{LEGACY_DATASET_FILE: old_csv})
    world.hub.fail_next("GET", f"/resolve/{head}/{DATASET_FILE}", 500, times=20)
    world.hub.fail_next("HEAD", f"/resolve/{head}/{DATASET_FILE}", 500, times=20)
    failed_with(world.plan(), "DatasetReadError")
    assert world.hub.head(REPO) == head


@pytest.mark.parametrize("status", [500, 502])
def test_hub_error_on_commit_fails_and_leaves_the_head(world, status):
    head = seed(world)
    assert world.plan().success and all(r.success for r in world.fetch())
    world.hub.fail_next("POST", "/commit/", status, times=5)
    assert not world.publish().success
    assert world.hub.head(REPO) == head
    assert world.store().keys(), "fetched chunks are kept for the next publish"


def test_a_partial_upload_fails_and_leaves_the_head(world):
    head = seed(world)
    assert world.plan().success and all(r.success for r in world.fetch())
    world.hub.fail_next("PUT", "/_fake_lfs/upload/", 500, times=20)
    assert not world.publish().success
    assert world.hub.head(REPO) == head


RACER: dict = {}


class _RacingRepo(DatasetRepoResource):
    """A dataset repo where another writer commits just before our first commit (a 412 follows)."""

    def repo(self):
        inner = super().repo()
        racer = RACER

        class Racing:
            description = inner.description

            def __getattr__(self, name):
                return getattr(inner, name)

            def commit(self, files, **kwargs):
                if racer["pending"]:
                    racer["pending"] = False
                    racer["hub"].commit(REPO, {DATASET_FILE: dataset_to_parquet(racer["frame"])}, summary="another writer")
                return inner.commit(files, **kwargs)

        return Racing()


def test_a_commit_in_between_is_read_and_merged_again(world):
    """Finding 9: the publish commits on exactly what it merged; after a 412 it reads the new head
    and merges again, so the other writer's rows are kept."""
    seed(world)
    assert world.plan().success and all(r.success for r in world.fetch())
    # The other writer fetched pkg00 after us (within clock skew): its row must survive our publish.
    theirs = published_frame(age_days=1)
    theirs.loc[0, ["last_day", "last_week", "last_month", "updated_at"]] = [1, 2, 999, time.time() + 60]
    RACER.update(pending=True, hub=world.hub, frame=theirs)
    world.repo_resource = _RacingRepo(repo_id=REPO, token=TOKEN, endpoint=world.hub_url)
    result = world.publish()
    assert result.success, run_failure(result)
    meta = result.asset_materializations_for_node("publish")
    attempts = [m.metadata["publish_attempts"].value for m in meta if m.asset_key.path == ["merged_dataset"]]
    assert attempts == [2]
    assert world.hub.commits(REPO)[-2].summary == "another writer"
    published = world.published().set_index("name")
    assert published.loc["pkg00", "last_month"] == 999, "their newer row is kept"
    assert published.loc["pkg05", "last_month"] == FRESH_COUNTS["pkg05"][2], "our fetches are applied on their head"


# ---- pypistats -----------------------------------------------------------------------------------


def test_a_stats_url_without_api_fails_the_chunk_at_the_canary(world):
    """Finding 3: every 404 became `empty`; a wrong PYPISTATS_API_URL overwrote counts with nulls."""
    head = seed(world)
    assert world.plan().success
    world.stats_url = world.stats.url  # no /api: every path is pypistats' 404
    results = world.fetch()
    assert results and all(not r.success for r in results)
    failed_with(results[0], "the stats API does not know pkg39: check PYPISTATS_API_URL and the proxies")
    assert all(world.store().read(key).empty for key in world.store().keys())
    assert world.hub.head(REPO) == head


def test_rows_turning_empty_en_masse_are_refused(world):
    """Finding 4: a dataset whose counts were reset to null passed the row-count guard."""
    head = seed(world)
    assert world.plan().success
    world.stats.counts = {"pkg39": FRESH_COUNTS["pkg39"]}  # the canary still answers; all else 404
    assert all(r.success for r in world.fetch())
    result = world.publish()
    message = failed_with(result, "previously valid rows fetched again that turned empty")
    assert "max_valid_to_empty_share" in message and "max_counted_row_loss_share" in message
    assert world.hub.head(REPO) == head
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["publish_guards"].passed and checks["counts_ordered"].passed


def test_a_slow_decline_is_caught_against_the_high_water_mark(world):
    """Finding 4: a decline of under 5% per publish passed every time."""
    seed(world, published_frame(age_days=1))
    world.index.projects[:] = NAMES[:38]  # -5%: within the share
    assert world.plan().success and world.publish().success
    world.index.projects[:] = NAMES[:37]  # -2.6% on the last publish, -7.5% on the high-water mark
    head = world.hub.head(REPO)
    assert world.plan().success
    failed_with(world.publish(), "rows: 40 -> 37")
    assert world.hub.head(REPO) == head
    # Raising the setting for one run accepts it, and the new figure becomes the mark.
    assert world.publish(max_row_loss_share=0.1, max_counted_row_loss_share=0.1).success
    world.index.projects[:] = NAMES[:36]
    assert world.plan().success and world.publish().success


@pytest.mark.parametrize("value", [5, float("nan"), -0.1, float("inf")])
def test_guard_settings_outside_zero_to_one_are_rejected(world, value):
    """Finding 4: a share of 5 or nan turned the guard off silently."""
    head = seed(world)
    result = world.publish(max_row_loss_share=value)
    assert not result.success
    assert world.hub.head(REPO) == head


def test_a_count_beyond_int64_fails_that_package_and_never_wedges_the_store(world):
    """Finding 6: a count beyond int64 was journaled, then every read of the store raised."""
    seed(world)
    world.stats.counts["pkg07"] = (1, 2, 2**64)
    assert world.plan().success
    results = world.fetch()
    assert all(r.success for r in results)
    assert world.store().read_all()  # readable
    assert world.publish().success
    published = world.published().set_index("name")
    assert published.loc["pkg07", "last_month"] == 30 * 8, "the failed package keeps its counts"
    assert published.loc["pkg08", "last_month"] == FRESH_COUNTS["pkg08"][2]


def test_a_failed_package_makes_the_card_say_gaps_not_complete(world):
    """Finding 11: a final publish's card said "complete" when packages failed."""
    seed(world)
    world.stats.fail("pkg11", [500] * 10)
    assert world.plan().success and all(r.success for r in world.fetch())
    assert world.publish(**{}).success
    card = world.hub.files(REPO)["README.md"].decode()
    assert "finished with gaps" in card and "complete; every" not in card


# ---- index ---------------------------------------------------------------------------------------


def test_a_much_shorter_index_fails_the_plan(world):
    """Finding 5: a well-formed partial index dropped the missing projects' rows."""
    head = seed(world)
    world.index.projects[:] = NAMES[:20]
    failed_with(world.plan(), "the index lists 20 projects but the published dataset has 40 rows")
    assert world.keys() == []
    assert world.hub.head(REPO) == head


def test_credentials_in_the_index_url_reach_no_output(world):
    """Finding 7: credentials in PYPI_INDEX_URL were copied into the url column, card and previews."""
    seed(world)
    secret = "s3cret-index-pass"
    world.index_url = world.index.index_url.replace("http://", f"http://reader:{secret}@")
    plan = world.plan()
    assert plan.success
    assert all(r.success for r in world.fetch())
    published = world.publish()
    assert published.success
    files = world.hub.files(REPO)
    assert all(secret.encode() not in data for data in files.values())
    assert set(world.published()["url"]) == {f"https://pypi.org/simple/{n}/" for n in NAMES}
    for result in (plan, published):
        for event in result.all_events:
            assert secret not in str(event.event_specific_data), event.event_type_value


# ---- clock ---------------------------------------------------------------------------------------


def test_a_published_time_in_the_future_is_refetched_and_replaced(world):
    """Finding 8: future or infinite `updated_at` rows were never stale again."""
    frame = published_frame(age_days=1)
    frame.loc[3, "updated_at"] = NOW + 365 * DAY
    frame.loc[4, "updated_at"] = float("inf")
    seed(world, frame)
    plan = world.plan()
    assert plan.success
    assert sorted(plan.output_for_node("stale_packages")["normalized"]) == ["pkg03", "pkg04"]
    assert all(r.success for r in world.fetch())
    result = world.publish()
    assert result.success
    published = world.published().set_index("name")
    assert published.loc[["pkg03", "pkg04"], "updated_at"].between(NOW - 60, time.time() + 1).all()
    meta = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("publish")}
    assert meta["merged_dataset"]["untrusted_times_replaced"].value == 2


def test_a_fetch_older_than_the_published_row_is_counted_not_silent(world):
    """Finding 8: a fetch not newer than the published row was dropped silently (a clock behind)."""
    seed(world, published_frame(age_days=0))
    store = world.store()
    behind = pd.DataFrame(
        {"normalized": ["pkg01"], "last_day": [5], "last_week": [5], "last_month": [5], "status": ["valid"], "updated_at": [NOW - DAY]}
    )
    for column in ("last_day", "last_week", "last_month"):
        behind[column] = behind[column].astype("Int64")
    store.write("19990101T000000-00000", behind)
    assert world.plan().success
    result = world.publish()
    assert result.success
    meta = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("publish")}
    assert meta["merged_dataset"]["fetches_superseded"].value == 1
    assert world.published().set_index("name").loc["pkg01", "last_month"] == 60


def test_a_private_repo_the_token_cannot_read_is_not_started_over(world):
    """Finding 10: a token without access to a private repo got 404, taken for "no repo yet"."""
    head = world.hub.create_dataset_repo(REPO, {DATASET_FILE: dataset_to_parquet(published_frame())}, private=True, owner="someone-else")
    assert world.plan().success  # all the read side can know: no repo
    assert all(r.success for r in world.fetch())
    failed_with(world.publish(), "exists but HF_TOKEN cannot read it")
    assert world.hub.head(REPO) == head and world.published()["last_month"].tolist() == published_frame()["last_month"].tolist()


def test_a_malformed_answer_is_a_failure_never_empty(world):
    """A 200 that is not the API's JSON (every attempt) leaves the row as it was."""
    seed(world)
    world.stats.garbage("pkg12", times=50, body=b'{"data": "nonsense"}', content_type="application/json")
    assert world.plan().success and all(r.success for r in world.fetch())
    assert world.publish().success
    row = world.published().set_index("name").loc["pkg12"]
    assert row["status"] == "valid" and row["last_month"] == 30 * 13 and row["updated_at"] < NOW - 30 * 86400


@pytest.mark.parametrize("fault", ["truncated", "error-page"])
def test_a_truncated_or_error_page_index_fails_the_plan(world, fault):
    head = seed(world)
    if fault == "truncated":
        world.index.truncate_at = 0.5
    else:
        world.index.override = (200, "text/html", "<html><body><h1>502 Bad Gateway</h1><a href='/'>home</a></body></html>")
    result = world.plan()
    assert not result.success
    assert world.keys() == [] and world.hub.head(REPO) == head
