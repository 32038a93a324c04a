"""The fake Hub against the real huggingface_hub client: if these pass, tests that publish through
HfApi exercise the same requests they would send to huggingface.co (REFERENCE.md section 4)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pypi_downloads_dagster_tests.fakes.hub import DROP, STALE_PARENT_MESSAGE, FakeHub, git_blob_sha1

REPO = "tester/pypi-downloads"

README = b"""---
license: apache-2.0
configs:
- config_name: default
  data_files: dataset.parquet
---

# PyPI downloads
"""
# Parquet-like: magic, NUL-laden binary body, magic; the NUL bytes make the Hub choose LFS.
PARQUET = b"PAR1" + bytes(range(256)) * 8 + b"\x00\x00\x00\x00PAR1"


def tiny_png() -> bytes:
    """A valid 1x1 PNG (its header holds NUL bytes, so it goes to LFS too)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


PNG = tiny_png()


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
def server(hub):
    with hub.serve() as server:
        yield server


@pytest.fixture
def api(server) -> HfApi:
    return HfApi(endpoint=server.url, token=None)


def download(api: HfApi, path: str, revision: str, cache_dir) -> bytes:
    local = api.hf_hub_download(REPO, path, repo_type="dataset", revision=revision, cache_dir=str(cache_dir))
    with open(local, "rb") as handle:
        return handle.read()


def publish_operations() -> list[CommitOperationAdd]:
    return [
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=README),
        CommitOperationAdd(path_in_repo="dataset.parquet", path_or_fileobj=PARQUET),
        CommitOperationAdd(path_in_repo="download_distribution.png", path_or_fileobj=PNG),
    ]


def test_create_repo_new_then_exist_ok(hub, api, server):
    url = api.create_repo(REPO, repo_type="dataset")
    assert url.repo_id == REPO and url.repo_type == "dataset"
    assert url == f"{server.url}/datasets/{REPO}"
    # A new repo holds one commit with .gitattributes, as on the Hub.
    assert list(hub.files(REPO)) == [".gitattributes"]
    assert [c.summary for c in hub.commits(REPO)] == ["initial commit"]

    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(REPO, repo_type="dataset")
    assert exc.value.response.status_code == 409
    assert exc.value.response.json()["url"] == url

    assert api.create_repo(REPO, repo_type="dataset", exist_ok=True) == url
    assert len(hub.commits(REPO)) == 1

    # Without a namespace the repo goes to the token's user.
    assert api.create_repo("other", repo_type="dataset").repo_id == "tester/other"


def test_repo_info_existing_missing_and_revisions(hub, api):
    first = hub.create_dataset_repo(REPO, {"README.md": README, "dataset.parquet": PARQUET})
    info = api.repo_info(REPO, repo_type="dataset", files_metadata=True)
    assert info.id == REPO and info.sha == first == hub.head(REPO)
    assert info.private is False
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "README.md", "dataset.parquet"}
    assert siblings["dataset.parquet"].lfs.sha256 == hashlib.sha256(PARQUET).hexdigest()
    assert siblings["README.md"].lfs is None and siblings["README.md"].blob_id == git_blob_sha1(README)
    assert info.card_data.license == "apache-2.0"

    second = hub.commit(REPO, {"dataset.parquet": PARQUET + b"\x00"})
    assert api.repo_info(REPO, repo_type="dataset").sha == second
    assert api.repo_info(REPO, repo_type="dataset", revision=first).sha == first

    with pytest.raises(RepositoryNotFoundError) as exc:
        api.repo_info("tester/missing", repo_type="dataset")
    assert exc.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO, repo_type="dataset", revision="f" * 40)
    assert api.repo_exists(REPO, repo_type="dataset") and not api.repo_exists("tester/missing", repo_type="dataset")


def test_file_exists_and_download_errors(hub, api, tmp_path):
    hub.create_dataset_repo(REPO, {"README.md": README})
    assert api.file_exists(REPO, "README.md", repo_type="dataset")
    assert not api.file_exists(REPO, "dataset.parquet", repo_type="dataset")
    # The client turns RepositoryNotFoundError (404 + RepoNotFound) into False as well.
    assert not api.file_exists("tester/missing", "README.md", repo_type="dataset")
    assert ("HEAD", "/datasets/tester/missing/resolve/main/README.md") in hub.requests

    with pytest.raises(EntryNotFoundError):
        download(api, "dataset.parquet", "main", tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        api.hf_hub_download("tester/missing", "README.md", repo_type="dataset", cache_dir=str(tmp_path))
    assert hub.unhandled == []


def test_list_repo_files_recursive_and_paginated(hub, api):
    hub.create_dataset_repo(REPO, {"README.md": README, "data/a.parquet": PARQUET, "data/deep/b.csv": "x\n1\n"})
    expected = [".gitattributes", "README.md", "data/a.parquet", "data/deep/b.csv"]
    assert sorted(api.list_repo_files(REPO, repo_type="dataset")) == expected

    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(REPO, repo_type="dataset")}
    assert top == {".gitattributes": "RepoFile", "README.md": "RepoFile", "data": "RepoFolder"}
    under_data = api.list_repo_tree(REPO, "data", recursive=True, repo_type="dataset")
    lfs = {entry.path: entry.lfs for entry in under_data if entry.path.endswith("t")}
    assert lfs["data/a.parquet"].sha256 == hashlib.sha256(PARQUET).hexdigest()

    hub.tree_page_size = 2  # the client follows the Link header through every page
    hub.clear_requests()
    assert sorted(api.list_repo_files(REPO, repo_type="dataset")) == expected
    assert sum(1 for method, path in hub.requests if path.endswith("/tree/main")) == 3  # 6 entries incl. 2 folders


def test_create_commit_regular_and_lfs_files_round_trip(hub, api, tmp_path):
    hub.create_dataset_repo(REPO)
    parent = hub.head(REPO)
    info = api.create_commit(
        REPO, publish_operations(), commit_message="Publish dataset", repo_type="dataset", parent_commit=parent
    )

    head = hub.head(REPO)
    assert info.oid == head and info.oid != parent
    assert info.commit_url == f"{api.endpoint}/datasets/{REPO}/commit/{head}"
    assert info.repo_url.repo_id == REPO
    commit = hub.commits(REPO)[-1]
    assert (commit.parent, commit.summary) == (parent, "Publish dataset")
    assert commit.changed == {"README.md", "dataset.parquet", "download_distribution.png"}
    # Text went inline in the commit; the binary files through LFS (batch, PUT, verify).
    assert hub.lfs_files(REPO) == {"dataset.parquet", "download_distribution.png"}
    methods = [method for method, path in hub.requests if "/_fake_lfs/" in path]
    assert methods.count("PUT") == 2 and methods.count("POST") == 2
    assert ("POST", "/api/validate-yaml") in hub.requests

    for revision in ("main", head):
        assert download(api, "README.md", revision, tmp_path / revision) == README
        assert download(api, "dataset.parquet", revision, tmp_path / revision) == PARQUET
        assert download(api, "download_distribution.png", revision, tmp_path / revision) == PNG
    # local_dir downloads (what the project uses) take the same route.
    local = api.hf_hub_download(REPO, "dataset.parquet", repo_type="dataset", local_dir=str(tmp_path / "local"))
    assert Path(local).read_bytes() == PARQUET

    # Unchanged files are dropped by the client (preupload reports their oids): no new commit.
    api.create_commit(REPO, publish_operations(), commit_message="Again", repo_type="dataset", parent_commit=head)
    assert hub.head(REPO) == head
    # A deletion is a commit of its own, and the old revision still serves the file.
    api.create_commit(
        REPO, [CommitOperationDelete("download_distribution.png")], commit_message="Drop chart", repo_type="dataset"
    )
    assert "download_distribution.png" not in hub.files(REPO)
    assert hub.commits(REPO)[-1].changed == {"download_distribution.png"}
    assert download(api, "download_distribution.png", head, tmp_path / "old") == PNG


def test_stale_parent_commit_is_refused_with_412(hub, api):
    stale = hub.create_dataset_repo(REPO, {"dataset.parquet": PARQUET})
    current = hub.commit(REPO, {"README.md": README}, summary="someone else")
    before = hub.files(REPO)

    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(
            REPO, publish_operations()[1:], commit_message="late", repo_type="dataset", parent_commit=stale
        )
    assert exc.value.response.status_code == 412
    assert STALE_PARENT_MESSAGE in str(exc.value)
    assert hub.head(REPO) == current and hub.files(REPO) == before


def test_writes_need_the_token():
    hub = FakeHub(token="secret")
    hub.create_dataset_repo(REPO, {"dataset.parquet": PARQUET})
    head, before = hub.head(REPO), hub.files(REPO)
    with hub.serve() as server:
        for token in ("wrong", None):
            intruder = HfApi(endpoint=server.url, token=token)
            with pytest.raises(HfHubHTTPError) as exc:
                intruder.create_commit(
                    REPO, publish_operations(), commit_message="x", repo_type="dataset", parent_commit=head
                )
            assert exc.value.response.status_code == 401
            with pytest.raises(HfHubHTTPError) as exc:
                intruder.create_repo("tester/new", repo_type="dataset")
            assert exc.value.response.status_code == 401
            # Reads stay open on a public repo.
            assert intruder.file_exists(REPO, "dataset.parquet", repo_type="dataset")
        assert hub.head(REPO) == head and hub.files(REPO) == before
        assert not hub.repo_exists("tester/new")

        owner = HfApi(endpoint=server.url, token="secret")
        assert owner.whoami()["name"] == "tester"
        owner.create_commit(REPO, publish_operations(), commit_message="ok", repo_type="dataset", parent_commit=head)
        assert hub.files(REPO)["dataset.parquet"] == PARQUET and "README.md" in hub.files(REPO)


def test_fail_next_makes_download_and_commit_fail_once(hub, api, tmp_path):
    hub.create_dataset_repo(REPO, {"dataset.parquet": PARQUET})
    head = hub.head(REPO)

    # The download GET is not retried on 5xx: hf_hub_download raises at once.
    hub.fail_next("GET", "/resolve/main/dataset.parquet", 500)
    with pytest.raises(HfHubHTTPError) as exc:
        download(api, "dataset.parquet", "main", tmp_path / "a")
    assert exc.value.response.status_code == 500
    assert download(api, "dataset.parquet", "main", tmp_path / "b") == PARQUET  # consumed after one use

    # Neither is the commit POST: a 500 there leaves the repo as it was.
    hub.fail_next("POST", f"/api/datasets/{REPO}/commit/", 500, body={"error": "backend down"})
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(REPO, publish_operations(), commit_message="x", repo_type="dataset", parent_commit=head)
    assert exc.value.response.status_code == 500 and "backend down" in str(exc.value)
    assert hub.head(REPO) == head and "README.md" not in hub.files(REPO)


def _request(url: str, body: bytes | None = None, method: str = "GET") -> tuple[int, dict]:
    """A raw request, for what the client never sends; returns (status, JSON body or {})."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        with err:
            status, raw = err.code, err.read()
    return status, json.loads(raw) if raw else {}


def _commit(url: str, lines: list[dict]) -> tuple[int, dict]:
    return _request(url, b"".join(json.dumps(line).encode() + b"\n" for line in lines), "POST")


def test_lfs_pointer_without_upload_and_bad_upload_are_refused(hub, server):
    head = hub.create_dataset_repo(REPO)
    commit_url = f"{server.url}/api/datasets/{REPO}/commit/main"
    header = {"key": "header", "value": {"summary": "sneaky", "description": "", "parentCommit": head}}
    oid = hashlib.sha256(PARQUET).hexdigest()
    lfs_line = {
        "key": "lfsFile",
        "value": {"path": "dataset.parquet", "algo": "sha256", "oid": oid, "size": len(PARQUET)},
    }
    status, body = _commit(commit_url, [header, lfs_line])
    assert status == 422 and "does not exist" in body["error"]
    # Binary content inline (skipping LFS) is refused too.
    content = base64.b64encode(PARQUET).decode()
    inline = {"key": "file", "value": {"path": "x.bin", "content": content, "encoding": "base64"}}
    assert _commit(commit_url, [header, inline])[0] == 400
    assert hub.head(REPO) == head

    # The upload URL checks what it gets against the announced sha256 and size.
    batch = json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(PARQUET)}]}).encode()
    status, body = _request(f"{server.url}/datasets/{REPO}.git/info/lfs/objects/batch", batch, "POST")
    href = body["objects"][0]["actions"]["upload"]["href"]
    assert _request(href, PARQUET[:-1] + b"X", "PUT")[0] == 400
    assert _commit(commit_url, [header, lfs_line])[0] == 422
    assert _request(href, PARQUET, "PUT")[0] == 200
    assert _commit(commit_url, [header, lfs_line])[0] == 200
    assert hub.files(REPO)["dataset.parquet"] == PARQUET


def test_unknown_route_is_a_loud_404(hub, server):
    status, body = _request(f"{server.url}/api/spaces/tester/x")
    assert status == 404 and "no route" in body["error"]
    assert hub.unhandled == [("GET", "/api/spaces/tester/x")]


def test_a_private_repo_is_not_found_by_another_user_yet_its_name_is_taken(tmp_path):
    hub = FakeHub(token="secret")
    hub.add_token("other-token", user="someone")
    head = hub.create_dataset_repo(REPO, {"dataset.parquet": PARQUET}, private=True)
    with hub.serve() as server:
        owner, other = HfApi(endpoint=server.url, token="secret"), HfApi(endpoint=server.url, token="other-token")
        assert owner.repo_info(REPO, repo_type="dataset").sha == head
        assert other.whoami()["name"] == "someone"
        # To a valid token of another user it is 404 "not found", exactly like a missing repo...
        with pytest.raises(RepositoryNotFoundError) as exc:
            other.repo_info(REPO, repo_type="dataset")
        assert exc.value.response.status_code == 404
        assert not other.file_exists(REPO, "dataset.parquet", repo_type="dataset")
        with pytest.raises(RepositoryNotFoundError):
            other.hf_hub_download(REPO, "dataset.parquet", repo_type="dataset", cache_dir=str(tmp_path))
        with pytest.raises(RepositoryNotFoundError):
            other.create_commit(REPO, publish_operations(), commit_message="x", repo_type="dataset", parent_commit=head)
        # ...but creating it is 409 "already exists".
        with pytest.raises(HfHubHTTPError) as exc:
            other.create_repo(REPO, repo_type="dataset")
        assert exc.value.response.status_code == 409
        # A repo created through the API belongs to the token's user (and namespace).
        assert other.create_repo("mine", repo_type="dataset", private=True).repo_id == "someone/mine"
        assert other.repo_info("someone/mine", repo_type="dataset").private
        with pytest.raises(RepositoryNotFoundError):
            owner.repo_info("someone/mine", repo_type="dataset")
    assert hub.head(REPO) == head and len(hub.commits(REPO)) == 2


def test_a_dropped_connection_and_a_hub_gone_offline(hub, api, server, tmp_path):
    hub.create_dataset_repo(REPO, {"README.md": README})
    hub.fail_next("HEAD", "/README.md", DROP)
    with pytest.raises(Exception, match="Server disconnected without sending a response"):
        download(api, "README.md", "main", tmp_path / "a")
    assert download(api, "README.md", "main", tmp_path / "b") == README  # consumed after one use

    hub.go_offline_after("GET", "/api/datasets/")
    assert api.repo_info(REPO, repo_type="dataset").sha == hub.head(REPO)  # answered as usual...
    with pytest.raises(Exception, match="Connection refused"):  # ...then the port is closed
        api.repo_info(REPO, repo_type="dataset")
    host, port = server.httpd.server_address[:2]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2)


def test_commit_adds_and_deletes_files_and_folders_at_once(hub, api):
    head = hub.create_dataset_repo(REPO, {"dataset.csv": "x\n1\n", "charts/a.png": PNG, "charts/b.png": PNG + b"b"})
    operations = [
        CommitOperationAdd(path_in_repo="dataset.parquet", path_or_fileobj=PARQUET),
        CommitOperationDelete("dataset.csv"),  # a "deletedFile" line
        CommitOperationDelete("charts/"),  # a "deletedFolder" line (the trailing slash says so)
    ]
    api.create_commit(REPO, operations, commit_message="one source", repo_type="dataset", parent_commit=head)
    assert sorted(hub.files(REPO)) == [".gitattributes", "dataset.parquet"]
    assert hub.commits(REPO)[-1].changed == {"dataset.parquet", "dataset.csv", "charts/a.png", "charts/b.png"}

    # Deleting a path that is not there refuses the whole commit.
    head, before = hub.head(REPO), hub.files(REPO)
    for missing in ("dataset.csv", "charts/"):
        with pytest.raises(EntryNotFoundError):
            api.create_commit(
                REPO,
                [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=README), CommitOperationDelete(missing)],
                commit_message="x",
                repo_type="dataset",
                parent_commit=head,
            )
    assert hub.head(REPO) == head and hub.files(REPO) == before
