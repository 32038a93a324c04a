"""Where the dataset lives: a Hugging Face dataset repo, or a local folder standing in for one.

Both speak the same small interface (`DatasetRepo`): read the current revision and files, and
publish a set of files as one commit on top of a known parent revision, so a publish never
overwrites a change it has not seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Optional, Protocol
from urllib.parse import urlsplit

import pandas as pd

from pypi_downloads_dagster.schema import (
    DATASET_FILE,
    LEGACY_DATASET_FILE,
    DatasetFormatError,
    empty_dataset,
    read_dataset_file,
)


class PublishConflict(RuntimeError):
    """The repo moved on since it was read (someone else committed); nothing was written."""


class DatasetReadError(RuntimeError):
    """The existing dataset could not be read; never to be taken as an empty dataset."""


class DatasetRepo(Protocol):
    """A place the dataset is published to. `description` is safe to show (no secrets)."""

    description: str

    def head(self) -> Optional[str]:
        """The current revision, or None when the repo does not exist yet."""

    def read_file(self, path: str, revision: str) -> Optional[bytes]:
        """The file's bytes at `revision`, or None when it does not exist there. Other failures raise."""

    def commit(self, files: dict[str, bytes], *, parent: Optional[str], message: str) -> str:
        """Write `files` as one commit on top of `parent`; return a reference to the commit
        (a URL or a revision). Raises PublishConflict when `parent` is not the current head."""

    def file_link(self, path: str) -> str:
        """Where a person can see the published file (a URL or a local path)."""


@dataclasses.dataclass
class ExistingDataset:
    """The dataset as the repo holds it: `frame` in the current schema, the `revision` it was read
    at (None: no repo yet), which file it came from, and that file's sha256 (to skip no-op publishes)."""

    frame: pd.DataFrame
    revision: Optional[str]
    source: Optional[str]
    sha256: Optional[str] = None


def read_existing_dataset(repo: DatasetRepo) -> ExistingDataset:
    """Read `dataset.parquet`, else `dataset.csv`, else (repo or both files missing) an empty dataset.

    Any other failure raises DatasetReadError: a network error, a 5xx or a corrupt file must stop
    the run, never look like an empty dataset that a publish would then shrink the repo to.
    """
    try:
        revision = repo.head()
        if revision is None:
            return ExistingDataset(empty_dataset(), None, None)
        for path in (DATASET_FILE, LEGACY_DATASET_FILE):
            data = repo.read_file(path, revision)
            if data is not None:
                frame = read_dataset_file(data, path)
                return ExistingDataset(frame, revision, path, hashlib.sha256(data).hexdigest())
    except DatasetFormatError as exc:
        raise DatasetReadError(f"{repo.description}: the existing dataset is unreadable: {exc}") from exc
    except Exception as exc:
        raise DatasetReadError(f"{repo.description}: reading the existing dataset failed: {type(exc).__name__}: {exc}") from exc
    return ExistingDataset(empty_dataset(), revision, None)


class LocalDatasetRepo:
    """A folder standing in for the dataset repo (`PYPI_DOWNLOADS_DIR`). Its revision is a digest
    of the files it holds, so a stale parent is detected just as the Hub does."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.description = f"local folder {self.path}"

    def _files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))

    def head(self) -> Optional[str]:
        if not self.path.is_dir():
            return None
        digest = hashlib.sha256()
        for file in self._files():
            digest.update(file.relative_to(self.path).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()[:40]

    def read_file(self, path: str, revision: str) -> Optional[bytes]:
        if self.head() != revision:
            raise PublishConflict(f"{self.description} changed since revision {revision}")
        file = self.path / path
        return file.read_bytes() if file.is_file() else None

    def file_link(self, path: str) -> str:
        return str((self.path / path).resolve())

    def commit(self, files: dict[str, bytes], *, parent: Optional[str], message: str) -> str:
        if self.head() != parent:
            raise PublishConflict(f"{self.description} changed since it was read (expected revision {parent}); nothing written")
        self.path.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a crash never leaves half a file where readers look.
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as handle:
                handle.write(data)
            os.replace(handle.name, target)
        return self.head() or ""


class HubDatasetRepo:
    """A dataset repo on the Hugging Face Hub (or any server speaking its API, via `endpoint`)."""

    def __init__(self, repo_id: str, *, token: Optional[str] = None, endpoint: Optional[str] = None):
        _prepare_client(endpoint)
        from huggingface_hub import HfApi

        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"HF_REPO_ID must look like 'namespace/name', got {repo_id!r}")
        self.repo_id = repo_id
        self.api = HfApi(endpoint=endpoint, token=token)
        self.description = f"dataset repo {repo_id} on {self.api.endpoint}"

    def head(self) -> Optional[str]:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            return self.api.repo_info(self.repo_id, repo_type="dataset").sha
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            # The Hub also answers "not found" for a repo the token may not see (401/403): that
            # must not pass for a missing repo, or a publish would start it over from nothing.
            status = exc.response.status_code if exc.response is not None else None
            if status != 404:
                raise PermissionError(f"{self.description}: access refused (HTTP {status}); check HF_TOKEN") from exc
            return None

    def read_file(self, path: str, revision: str) -> Optional[bytes]:
        from huggingface_hub.errors import EntryNotFoundError

        with tempfile.TemporaryDirectory(prefix="pypi-downloads-") as folder:
            try:
                local = self.api.hf_hub_download(
                    self.repo_id, path, repo_type="dataset", revision=revision, local_dir=folder
                )
            except EntryNotFoundError:
                return None
            return Path(local).read_bytes()

    def file_link(self, path: str) -> str:
        return f"{self.api.endpoint}/datasets/{self.repo_id}/blob/main/{path}"

    def commit(self, files: dict[str, bytes], *, parent: Optional[str], message: str) -> str:
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.errors import HfHubHTTPError

        if parent is None:
            self.api.create_repo(self.repo_id, repo_type="dataset", exist_ok=True)
            parent = self.head()
            # Created by someone else in the meantime, with a dataset we never read: do not overwrite it.
            if any(self.read_file(name, parent) is not None for name in (DATASET_FILE, LEGACY_DATASET_FILE)):
                raise PublishConflict(f"{self.description} appeared with a dataset since it was read; nothing written")
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=io.BytesIO(data)) for name, data in files.items()]
        try:
            info = self.api.create_commit(
                self.repo_id, operations, commit_message=message, repo_type="dataset", parent_commit=parent
            )
        except HfHubHTTPError as exc:
            if exc.response is not None and exc.response.status_code == 412:
                raise PublishConflict(f"{self.description} changed since revision {parent}; nothing written") from exc
            raise
        return info.commit_url


def _prepare_client(endpoint: Optional[str]) -> None:
    """Xet storage and telemetry exist only on huggingface.co: for any other endpoint (a mirror, a
    local server) upload through LFS and send no telemetry, whatever the environment says."""
    host = urlsplit(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or ""
    if host == "huggingface.co" or host.endswith(".huggingface.co"):
        return
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_XET = True
    constants.HF_HUB_DISABLE_TELEMETRY = True


class PublishRefused(RuntimeError):
    """The new dataset would lose more rows than allowed; nothing was written."""


@dataclasses.dataclass(frozen=True)
class PublishOutcome:
    committed: bool
    commit: Optional[str]  # commit URL or revision; None when nothing changed
    changed_files: tuple[str, ...]


def check_row_loss(existing_rows: int, new_rows: int, max_row_loss_share: float) -> None:
    """Raise PublishRefused when `new_rows` is below what the repo holds by more than the allowed share."""
    floor = existing_rows * (1.0 - max_row_loss_share)
    if new_rows < floor:
        raise PublishRefused(
            f"refusing to publish {new_rows:,} rows over {existing_rows:,}: that loses "
            f"{existing_rows - new_rows:,} rows ({(existing_rows - new_rows) / existing_rows:.1%}), more than the "
            f"allowed {max_row_loss_share:.1%}. If projects really left the index, raise max_row_loss_share for one run."
        )


def publish_dataset(
    repo: DatasetRepo,
    files: dict[str, bytes],
    *,
    existing: ExistingDataset,
    new_rows: int,
    max_row_loss_share: float,
    message: str,
) -> PublishOutcome:
    """Publish `files` (dataset.parquet, README.md, charts) in one commit on top of the revision the
    existing dataset was read at. Refuses a dataset that shrinks more than `max_row_loss_share`,
    and commits nothing when every file is byte-identical to what the repo holds."""
    check_row_loss(len(existing.frame), new_rows, max_row_loss_share)
    changed = tuple(name for name, data in files.items() if not _same_as_repo(repo, existing, name, data))
    if not changed:
        return PublishOutcome(False, None, ())
    return PublishOutcome(True, repo.commit(files, parent=existing.revision, message=message), changed)


def _same_as_repo(repo: DatasetRepo, existing: ExistingDataset, name: str, data: bytes) -> bool:
    if existing.revision is None:
        return False
    if name == DATASET_FILE and existing.source == DATASET_FILE:
        return existing.sha256 == hashlib.sha256(data).hexdigest()  # already downloaded once; no second read
    return repo.read_file(name, existing.revision) == data
