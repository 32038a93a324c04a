"""Reading and publishing the dataset through the real huggingface_hub client, against the Hub fake."""

import io
import os
import stat

import numpy as np
import pandas as pd
import pytest
from huggingface_hub import HfApi

from pypi_downloads_dagster.publishing.hub import (
    DatasetReadError,
    HubDatasetRepo,
    LocalDatasetRepo,
    PublishConflict,
    read_existing_dataset,
)
from pypi_downloads_dagster.dataset.guards import PublishGuards
from pypi_downloads_dagster.publishing.publish import commit_changes, publish_snapshot
from pypi_downloads_dagster.services.pypi_index import build_project_index
from pypi_downloads_dagster.dataset.schema import conform, dataset_to_parquet, read_dataset_file
from pypi_downloads_dagster_tests.fakes.hub import DROP, FakeHub

REPO = "tester/pypi-downloads"
TOKEN = "hf_test_secret_token"
CARD = b"---\nlicense: apache-2.0\n---\n# card\n"


def old_frame(n=3):
    return pd.DataFrame(
        {
            "name": [f"Pkg{i}" for i in range(n)],
            "url": [f"https://pypi.org/simple/pkg{i}/" for i in range(n)],
            "last_day": [float(i) for i in range(n)],
            "last_week": [float(7 * i) for i in range(n)],
            "last_month": [np.nan] + [float(30 * i) for i in range(1, n)],
            "updated_at": [1_700_000_000.0] * n,
        }
    )


def csv_bytes(frame):
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


@pytest.fixture
def hub():
    fake = FakeHub(token=TOKEN)
    with fake.serve() as server:
        fake.url = server.url
        yield fake


def repo_of(hub, token=TOKEN):
    return HubDatasetRepo(REPO, token=token, endpoint=hub.url)


def test_missing_repo_reads_as_empty(hub):
    existing = read_existing_dataset(repo_of(hub))
    assert existing.revision is None and existing.source is None and len(existing.frame) == 0


def test_old_csv_is_read_and_migrated_and_parquet_is_preferred(hub):
    hub.create_dataset_repo(REPO, {"dataset.csv": csv_bytes(old_frame())})
    existing = read_existing_dataset(repo_of(hub))
    assert existing.source == "dataset.csv" and existing.revision == hub.head(REPO)
    assert existing.frame["status"].tolist() == ["empty", "valid", "valid"]

    parquet = dataset_to_parquet(conform(old_frame(5)))
    hub.commit(REPO, {"dataset.parquet": parquet})
    existing = read_existing_dataset(repo_of(hub))
    assert existing.source == "dataset.parquet" and len(existing.frame) == 5


@pytest.mark.parametrize("method, path", [("GET", "/resolve/"), ("GET", "/api/datasets/")])
def test_a_failed_read_is_an_error_never_an_empty_dataset(hub, method, path):
    hub.create_dataset_repo(REPO, {"dataset.parquet": dataset_to_parquet(conform(old_frame()))})
    hub.fail_next(method, path, 500, times=5)
    with pytest.raises(DatasetReadError) as error:
        read_existing_dataset(repo_of(hub))
    assert "reading the existing dataset failed" in str(error.value)
    assert TOKEN not in str(error.value)


def test_a_corrupt_or_foreign_file_is_an_error(hub):
    hub.create_dataset_repo(REPO, {"dataset.parquet": b"PAR1\x00garbage"})
    with pytest.raises(DatasetReadError, match="unreadable"):
        read_existing_dataset(repo_of(hub))
    foreign = pd.DataFrame({"package": ["x"], "downloads": [1]})
    hub.commit(REPO, {"dataset.parquet": dataset_to_parquet_raw(foreign)})
    with pytest.raises(DatasetReadError, match="unexpected columns"):
        read_existing_dataset(repo_of(hub))


def dataset_to_parquet_raw(frame):
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def files_for(frame):
    return {"dataset.parquet": dataset_to_parquet(frame), "README.md": b"---\nlicense: apache-2.0\n---\n# card\n", "top_packages.png": b"\x89PNG\r\n\x1a\n\x00fake"}


def test_first_publish_creates_the_dataset_repo_in_one_commit(hub):
    repo = repo_of(hub)
    existing = read_existing_dataset(repo)
    frame = conform(old_frame())
    outcome = commit_changes(repo, existing, files_for(frame), "first")
    assert outcome.committed and outcome.commit.startswith(f"{hub.url}/datasets/{REPO}/commit/")
    published = hub.commits(REPO)[-1]
    assert published.summary == "first" and published.changed == {"dataset.parquet", "README.md", "top_packages.png"}
    assert read_dataset_file(hub.files(REPO)["dataset.parquet"], "dataset.parquet").equals(frame)


def test_publish_on_a_moved_repo_is_refused_and_changes_nothing(hub):
    hub.create_dataset_repo(REPO, {"dataset.parquet": dataset_to_parquet(conform(old_frame()))})
    repo = repo_of(hub)
    existing = read_existing_dataset(repo)
    hub.commit(REPO, {"other.txt": b"someone else"})
    head = hub.head(REPO)
    with pytest.raises(PublishConflict, match="changed since"):
        commit_changes(repo, existing, files_for(conform(old_frame(4))), "m")
    assert hub.head(REPO) == head


def test_shrinking_is_refused_before_anything_is_sent(hub):
    hub.create_dataset_repo(REPO, {"dataset.parquet": dataset_to_parquet(conform(old_frame(100)))})
    repo = repo_of(hub)
    head = hub.head(REPO)
    index = build_project_index([f"Pkg{i}" for i in range(90)], fmt="json").projects
    no_fetches = pd.DataFrame({"normalized": pd.Series([], dtype=object)})
    kwargs = dict(projects=index, fetched=no_fetches, render_files=lambda p: {"dataset.parquet": dataset_to_parquet(p.frame)}, message=lambda p: "m")
    refused = publish_snapshot(repo, guards=PublishGuards(), **kwargs)
    assert "rows: 100 -> 90" in refused.refusal and refused.outcome is None
    assert hub.head(REPO) == head
    # With the setting raised for one run it goes through.
    accepted = publish_snapshot(repo, guards=PublishGuards(max_row_loss_share=0.15, max_counted_row_loss_share=0.15), **kwargs)
    assert accepted.outcome.committed and len(read_dataset_file(hub.files(REPO)["dataset.parquet"], "dataset.parquet")) == 90


def test_identical_files_make_no_commit(hub):
    repo = repo_of(hub)
    files = files_for(conform(old_frame()))
    commit_changes(repo, read_existing_dataset(repo), files, "m")
    head = hub.head(REPO)
    outcome = commit_changes(repo, read_existing_dataset(repo), files, "m")
    assert not outcome.committed and hub.head(REPO) == head


def test_a_wrong_token_fails_without_showing_the_token(hub):
    repo = repo_of(hub, token="hf_wrong_token_value")
    with pytest.raises(Exception) as error:
        commit_changes(repo, read_existing_dataset(repo), files_for(conform(old_frame())), "m")
    assert "hf_wrong_token_value" not in str(error.value) and not hub.repo_exists(REPO)


def test_local_folder_detects_a_stale_parent(tmp_path):
    repo = LocalDatasetRepo(tmp_path / "repo")
    existing = read_existing_dataset(repo)
    assert existing.revision is None
    commit_changes(repo, existing, files_for(conform(old_frame())), "m")
    with pytest.raises(PublishConflict):
        commit_changes(repo, existing, files_for(conform(old_frame(4))), "m")


# ---- a failed read is an error, whatever the huggingface cache holds ----------------------------


@pytest.fixture
def hf_cache(monkeypatch, tmp_path):
    """This test's own HF_HOME cache (the client reads constants.HF_HUB_CACHE at each call)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    return tmp_path / "hf-home" / "hub"


def go_offline_before(hub, name):
    # Refused at the HEAD of `name`: the port closes after the request before it (the parquet
    # HEAD, a genuine 404, when `name` is the CSV; else the repo_info of head()).
    hub.go_offline_after("*", "/api/datasets/" if name == "dataset.parquet" else "/dataset.parquet")


# (how the Hub fails, what the error must name). Faults last past the client's own retries.
READ_FAULTS = [
    pytest.param(lambda hub, name, data: hub.fail_next("HEAD", f"/{name}", 500, times=50), "500 Internal Server Error", id="HEAD-500"),
    pytest.param(lambda hub, name, data: hub.fail_next("HEAD", f"/{name}", 503, times=50), "503 Service Unavailable", id="HEAD-503"),
    pytest.param(lambda hub, name, data: hub.fail_next("HEAD", f"/{name}", 429, times=50), "429 Too Many Requests", id="HEAD-429"),
    pytest.param(lambda hub, name, data: hub.fail_next("HEAD", f"/{name}", 403, times=50), "403 Forbidden", id="HEAD-403"),
    pytest.param(
        lambda hub, name, data: hub.fail_next("HEAD", f"/{name}", 200, body="<html>Wi-Fi login</html>", times=50),
        "missing the 'X-Repo-Commit' header",
        id="HEAD-200-without-hub-headers",
    ),
    pytest.param(lambda hub, name, data: hub.fail_next("HEAD", f"/{name}", DROP, times=50), "Server disconnected", id="connection-dropped"),
    pytest.param(lambda hub, name, data: go_offline_before(hub, name), "Connection refused", id="connection-refused"),
    pytest.param(lambda hub, name, data: hub.fail_next("GET", f"/{name}", 500, times=50), "500 Internal Server Error", id="GET-500"),
    pytest.param(
        lambda hub, name, data: hub.fail_next("GET", f"/{name}", 200, body=data[: len(data) // 2], times=50),
        "Consistency check failed",
        id="GET-truncated",
    ),
]


@pytest.mark.parametrize("cache", ["cold", "warm"])
@pytest.mark.parametrize("name", ["dataset.parquet", "dataset.csv"])
@pytest.mark.parametrize("arm, cause", READ_FAULTS)
def test_a_failed_read_is_an_error_whatever_the_cache_holds(hub, hf_cache, no_backoff, arm, cause, name, cache):
    # Beside a parquet lies the frozen CSV: a failed parquet read must not fall back to it.
    csv = csv_bytes(old_frame())
    files = {"dataset.parquet": dataset_to_parquet(conform(old_frame())), "dataset.csv": csv} if name == "dataset.parquet" else {"dataset.csv": csv}
    head = hub.create_dataset_repo(REPO, files)
    if cache == "warm":  # an earlier successful download of the same file, at the same revision
        HfApi(endpoint=hub.url, token=TOKEN).hf_hub_download(REPO, name, repo_type="dataset", revision=head)
        assert list(hf_cache.rglob(name))
    arm(hub, name, files[name])
    with pytest.raises(DatasetReadError) as error:
        read_existing_dataset(repo_of(hub))
    message = str(error.value)
    assert cause in message and f"({name} at revision {head})" in message, message
    assert TOKEN not in message and error.value.__cause__ is not None


def test_a_missing_parquet_reads_the_csv_and_a_missing_repo_reads_as_empty(hub):
    assert read_existing_dataset(repo_of(hub)).revision is None
    head = hub.create_dataset_repo(REPO, {"dataset.csv": csv_bytes(old_frame())})
    existing = read_existing_dataset(repo_of(hub))
    assert (existing.source, existing.revision, len(existing.frame)) == ("dataset.csv", head, 3)


def test_401_is_never_taken_for_a_missing_repo_or_file(hub):
    hub.create_dataset_repo(REPO, {"dataset.parquet": dataset_to_parquet(conform(old_frame()))})
    hub.fail_next("GET", f"/api/datasets/{REPO}", 401, headers={"X-Error-Code": "RepoNotFound"})
    with pytest.raises(DatasetReadError, match=r"access refused \(HTTP 401\)"):
        read_existing_dataset(repo_of(hub))
    hub.fail_next("HEAD", "/dataset.parquet", 401)
    with pytest.raises(DatasetReadError, match="401"):
        read_existing_dataset(repo_of(hub))


# ---- first publish: creating the repo ---------------------------------------------------------


def test_a_private_repo_the_token_cannot_read_fails_the_publish_and_changes_nothing(hub):
    # The Hub answers 404 for it, as for a missing repo, but 409 when it is created again.
    hub.create_dataset_repo(REPO, {"dataset.parquet": dataset_to_parquet(conform(old_frame(50)))}, private=True, owner="someone-else")
    repo = repo_of(hub)
    existing = read_existing_dataset(repo)
    assert existing.revision is None and len(existing.frame) == 0  # all the read side can know
    head, commits = hub.head(REPO), len(hub.commits(REPO))
    with pytest.raises(PermissionError, match="exists but HF_TOKEN cannot read it") as error:
        repo.commit(files_for(conform(old_frame())), parent=None, message="first")
    assert TOKEN not in str(error.value)
    assert hub.head(REPO) == head and len(hub.commits(REPO)) == commits
    assert sorted(hub.files(REPO)) == [".gitattributes", "dataset.parquet"]


def test_a_repo_created_since_it_was_read_is_a_conflict(hub):
    repo = repo_of(hub)
    assert read_existing_dataset(repo).revision is None
    head = hub.create_dataset_repo(REPO)  # another writer, even with nothing in it yet
    with pytest.raises(PublishConflict, match="created since it was read"):
        repo.commit(files_for(conform(old_frame())), parent=None, message="first")
    assert hub.head(REPO) == head


def test_a_token_that_may_not_create_the_repo_is_a_permission_error(hub):
    with pytest.raises(PermissionError, match=r"may not create the repo \(HTTP 401\)") as error:
        repo_of(hub, token="hf_wrong_token_value").commit(files_for(conform(old_frame())), parent=None, message="m")
    assert "hf_wrong_token_value" not in str(error.value) and not hub.repo_exists(REPO)


# ---- one source of truth: deleting in the same commit -----------------------------------------


def test_commit_deletes_the_csv_in_the_same_commit(hub):
    head = hub.create_dataset_repo(REPO, {"dataset.csv": csv_bytes(old_frame())})
    before = len(hub.commits(REPO))
    parquet = dataset_to_parquet(conform(old_frame()))
    repo_of(hub).commit({"dataset.parquet": parquet}, parent=head, message="parquet", delete=["dataset.csv"])
    commits = hub.commits(REPO)
    assert len(commits) == before + 1 and commits[-1].changed == {"dataset.parquet", "dataset.csv"}
    assert sorted(hub.files(REPO)) == [".gitattributes", "dataset.parquet"]


def test_deleting_an_absent_path_is_fine(hub):
    parquet = dataset_to_parquet(conform(old_frame()))
    repo = repo_of(hub)
    repo.commit({"dataset.parquet": parquet}, parent=None, message="first", delete=["dataset.csv"])  # new repo
    repo.commit({"README.md": CARD}, parent=hub.head(REPO), message="card", delete=["dataset.csv"])
    assert sorted(hub.files(REPO)) == [".gitattributes", "README.md", "dataset.parquet"]


def test_local_folder_deletes_and_writes_world_readable_files(tmp_path):
    repo = LocalDatasetRepo(tmp_path / "repo")
    repo.commit({"dataset.csv": b"name\nx\n", "charts/a.png": b"png"}, parent=None, message="m")
    repo.commit({"dataset.parquet": b"PAR1"}, parent=repo.head(), message="m", delete=["dataset.csv", "absent.txt"])
    files = sorted(p.relative_to(repo.path).as_posix() for p in repo.path.rglob("*") if p.is_file())
    assert files == ["charts/a.png", "dataset.parquet"]
    assert {stat.S_IMODE(os.stat(repo.path / name).st_mode) for name in files} == {0o644}


# ---- secrets --------------------------------------------------------------------------------


def test_credentials_in_the_endpoint_are_never_shown(hub, no_backoff):
    hub.create_dataset_repo(REPO, {"dataset.parquet": dataset_to_parquet(conform(old_frame()))})
    repo = HubDatasetRepo(REPO, token=TOKEN, endpoint=hub.url.replace("http://", "http://mirror-user:mirror-secret@"))
    shown = [repo.description, repo.file_link("dataset.parquet")]
    hub.fail_next("HEAD", "/dataset.parquet", 500, times=50)
    with pytest.raises(DatasetReadError) as read_error:
        read_existing_dataset(repo)
    hub.fail_next("POST", "/preupload/", 500, times=50)
    with pytest.raises(RuntimeError) as commit_error:
        repo.commit({"README.md": CARD}, parent=hub.head(REPO), message="m")
    shown += [str(read_error.value), str(commit_error.value)]
    assert "500 Internal Server Error" in shown[2] and "publishing failed" in shown[3] and "500" in shown[3]
    assert not any("mirror-secret" in text or TOKEN in text for text in shown), shown
    # A traceback would show the original errors, URLs and all: not chained.
    assert read_error.value.__cause__ is None and commit_error.value.__cause__ is None


def test_two_local_publishers_on_one_parent_never_mix_their_files(tmp_path, monkeypatch):
    """Issue 7, finding 5: the folder checked the head, then replaced files one by one, so two
    publishers could both pass the check and leave a mix. Writes are slowed to widen the window."""
    import os as os_module
    import threading
    import time

    import pypi_downloads_dagster.publishing.hub as hub_module

    repo = LocalDatasetRepo(tmp_path / "repo")
    parent = commit_changes(repo, read_existing_dataset(repo), files_for(conform(old_frame())), "first").commit
    slow_replace = os_module.replace

    def replace(src, dst):
        time.sleep(0.05)
        slow_replace(src, dst)

    monkeypatch.setattr(hub_module.os, "replace", replace)
    start = threading.Barrier(2)
    outcomes = {}

    def publish(label):
        files = {"a.txt": label.encode(), "b.txt": label.encode(), "c.txt": label.encode()}
        start.wait()
        try:
            LocalDatasetRepo(tmp_path / "repo").commit(files, parent=parent, message=label)
            outcomes[label] = "committed"
        except PublishConflict:
            outcomes[label] = "conflict"

    threads = [threading.Thread(target=publish, args=(label,)) for label in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["committed", "conflict"]
    winner = next(label for label, outcome in outcomes.items() if outcome == "committed")
    assert {(tmp_path / "repo" / name).read_text() for name in ("a.txt", "b.txt", "c.txt")} == {winner}
