"""Reading and publishing the dataset through the real huggingface_hub client, against the Hub fake."""

import io

import numpy as np
import pandas as pd
import pytest

from pypi_downloads_dagster.hub import (
    DatasetReadError,
    HubDatasetRepo,
    LocalDatasetRepo,
    PublishConflict,
    PublishRefused,
    publish_dataset,
    read_existing_dataset,
)
from pypi_downloads_dagster.schema import conform, dataset_to_parquet, read_dataset_file
from pypi_downloads_dagster_tests.fakes.hub import FakeHub

REPO = "tester/pypi-downloads"
TOKEN = "hf_test_secret_token"


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
    outcome = publish_dataset(repo, files_for(frame), existing=existing, new_rows=3, max_row_loss_share=0.05, message="first")
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
        publish_dataset(repo, files_for(conform(old_frame(4))), existing=existing, new_rows=4, max_row_loss_share=0.05, message="m")
    assert hub.head(REPO) == head


def test_shrinking_is_refused_before_anything_is_sent(hub):
    hub.create_dataset_repo(REPO, {"dataset.parquet": dataset_to_parquet(conform(old_frame(100)))})
    repo = repo_of(hub)
    existing = read_existing_dataset(repo)
    head = hub.head(REPO)
    with pytest.raises(PublishRefused, match="loses 10 rows"):
        publish_dataset(repo, files_for(conform(old_frame(90))), existing=existing, new_rows=90, max_row_loss_share=0.05, message="m")
    assert hub.head(REPO) == head
    # Within the allowed share it goes through.
    outcome = publish_dataset(repo, files_for(conform(old_frame(96))), existing=existing, new_rows=96, max_row_loss_share=0.05, message="m")
    assert outcome.committed


def test_identical_files_make_no_commit(hub):
    repo = repo_of(hub)
    files = files_for(conform(old_frame()))
    publish_dataset(repo, files, existing=read_existing_dataset(repo), new_rows=3, max_row_loss_share=0.05, message="m")
    head = hub.head(REPO)
    outcome = publish_dataset(repo, files, existing=read_existing_dataset(repo), new_rows=3, max_row_loss_share=0.05, message="m")
    assert not outcome.committed and hub.head(REPO) == head


def test_a_wrong_token_fails_without_showing_the_token(hub):
    repo = repo_of(hub, token="hf_wrong_token_value")
    with pytest.raises(Exception) as error:
        publish_dataset(repo, files_for(conform(old_frame())), existing=read_existing_dataset(repo), new_rows=3, max_row_loss_share=0.05, message="m")
    assert "hf_wrong_token_value" not in str(error.value) and not hub.repo_exists(REPO)


def test_local_folder_detects_a_stale_parent(tmp_path):
    repo = LocalDatasetRepo(tmp_path / "repo")
    existing = read_existing_dataset(repo)
    assert existing.revision is None
    publish_dataset(repo, files_for(conform(old_frame())), existing=existing, new_rows=3, max_row_loss_share=0.05, message="m")
    with pytest.raises(PublishConflict):
        publish_dataset(repo, files_for(conform(old_frame(4))), existing=existing, new_rows=4, max_row_loss_share=0.05, message="m")
