"""Where the dataset lives: a Hugging Face dataset repo, or a local folder standing in for one.

Both speak the same small interface (`DatasetRepo`): read the current revision and files, and
publish a set of files as one commit on top of a known parent revision, so a publish never
overwrites a change it has not seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Protocol
from urllib.parse import urlsplit

import pandas as pd

from pypi_downloads_dagster.dataset.guards import Baseline
from pypi_downloads_dagster.services.http import redact_url
from pypi_downloads_dagster.dataset.schema import (
    DATASET_FILE,
    LEGACY_DATASET_FILE,
    DatasetFormatError,
    empty_dataset,
    read_dataset_baseline,
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
        """The file's bytes at `revision`, or None only when the file really does not exist there.
        Any other failure (unreachable, refused, a truncated download) raises."""

    def list_files(self, revision: str) -> frozenset[str]:
        """Every file path at `revision`."""

    def commit(
        self, files: dict[str, bytes], *, parent: Optional[str], message: str, delete: Sequence[str] = ()
    ) -> str:
        """Write `files` and remove the paths in `delete` (those `parent` lacks are skipped) as one
        commit on top of `parent`; return a reference to the commit (a URL or a revision).
        Raises PublishConflict when `parent` is not the current head."""

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
    files: frozenset[str] = frozenset()  # every path at `revision`
    baseline: Baseline = Baseline()  # the guards' high-water marks the published file carries


def read_existing_dataset(repo: DatasetRepo) -> ExistingDataset:
    """Read `dataset.parquet`; only when that file is missing, `dataset.csv`; when the repo or both
    files are missing, an empty dataset.

    Any other failure raises DatasetReadError: a network error, a 5xx or a corrupt file must stop
    the run, never look like an empty dataset that a publish would then shrink the repo to (nor
    fall back to the frozen CSV).
    """
    try:
        revision = repo.head()
        if revision is None:
            return ExistingDataset(empty_dataset(), None, None)
        for path in (DATASET_FILE, LEGACY_DATASET_FILE):
            data = repo.read_file(path, revision)  # None: missing; a failed read raises
            if data is not None:
                frame = read_dataset_file(data, path)
                baseline = Baseline.from_dict(read_dataset_baseline(data) if path == DATASET_FILE else None)
                sha256 = hashlib.sha256(data).hexdigest()
                return ExistingDataset(frame, revision, path, sha256, repo.list_files(revision), baseline)
        files = repo.list_files(revision)
    except DatasetFormatError as exc:
        raise DatasetReadError(f"{repo.description}: the existing dataset is unreadable: {exc}") from exc
    except DatasetReadError:
        raise  # says what failed already
    except Exception as exc:
        raise _failure(DatasetReadError, f"{repo.description}: reading the existing dataset failed", exc)
    return ExistingDataset(empty_dataset(), revision, None, files=files)


# `scheme://user:password@` in a URL (huggingface_hub puts request URLs in its error messages).
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")


def _failure(cls: type[Exception], message: str, exc: BaseException) -> Exception:
    """`cls("message: Type: text; caused by Type: text")` for `exc`, safe to show: credentials in
    URLs hidden. Chained to `exc` unless the chain's text holds credentials (a traceback shows it).
    Raise it inside the `except` that caught `exc`."""
    shown, chain, current = [], [], exc
    while current is not None and len(chain) < 10:
        text = f"{type(current).__name__}: {current}"
        chain.append(text)
        # Two levels say it: huggingface_hub keeps a failed download's HTTP status in the cause.
        if len(shown) < 2 and not any(str(current) in line for line in shown):
            shown.append(text)
        current = current.__cause__ or current.__context__
    error = cls(f"{message}: {_URL_CREDENTIALS.sub('', '; caused by '.join(shown))}")
    error.__cause__ = None if any(_URL_CREDENTIALS.search(text) for text in chain) else exc
    error.__suppress_context__ = True
    return error


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

    def list_files(self, revision: str) -> frozenset[str]:
        if self.head() != revision:
            raise PublishConflict(f"{self.description} changed since revision {revision}")
        return frozenset(file.relative_to(self.path).as_posix() for file in self._files())

    def file_link(self, path: str) -> str:
        return str((self.path / path).resolve())

    def commit(
        self, files: dict[str, bytes], *, parent: Optional[str], message: str, delete: Sequence[str] = ()
    ) -> str:
        with self._exclusive():
            return self._commit(files, parent=parent, delete=delete)

    @contextlib.contextmanager
    def _exclusive(self):
        """One publisher at a time on this machine, from the head check to the last file: two
        could otherwise both pass the check and leave a mix of their files. The lock file sits
        beside the folder, so it is no file of the dataset and no part of its revision."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{self.path.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _commit(self, files: dict[str, bytes], *, parent: Optional[str], delete: Sequence[str]) -> str:
        if self.head() != parent:
            raise PublishConflict(f"{self.description} changed since it was read (expected revision {parent}); nothing written")
        self.path.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a crash never leaves half a file where readers look.
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as handle:
                handle.write(data)
            os.chmod(handle.name, 0o644)  # tempfile makes it 0600; a published file is for everyone to read
            os.replace(handle.name, target)
        for name in delete:
            (self.path / name).unlink(missing_ok=True)  # absent already: nothing to do, as on the Hub
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
        # The endpoint may carry user:password (a mirror behind basic auth): never shown.
        self.description = f"dataset repo {repo_id} on {redact_url(self.api.endpoint)}"

    def head(self) -> Optional[str]:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            return self.api.repo_info(self.repo_id, repo_type="dataset").sha
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            # A 401/403 must not pass for a missing repo, or a publish would start it over from nothing.
            # A 404 is all the Hub says of a missing repo and of a private one this token may not
            # read alike: taken as missing here; commit() tells the two apart when it creates the repo.
            status = exc.response.status_code if exc.response is not None else None
            if status != 404:
                raise _failure(PermissionError, f"{self.description}: access refused (HTTP {status}); check HF_TOKEN", exc)
            return None

    def read_file(self, path: str, revision: str) -> Optional[bytes]:
        from huggingface_hub.errors import RemoteEntryNotFoundError

        with tempfile.TemporaryDirectory(prefix="pypi-downloads-") as folder:
            try:
                local = self.api.hf_hub_download(
                    self.repo_id, path, repo_type="dataset", revision=revision, local_dir=folder,
                    # An empty cache of its own: a copy in HF_HOME must not answer for a Hub that fails.
                    cache_dir=os.path.join(folder, ".hf-cache"),
                )
            except RemoteEntryNotFoundError:
                # The Hub itself said the file is missing. Its sibling LocalEntryNotFoundError means the
                # Hub could not be asked (5xx, 429, 403, network, an answer without the Hub's headers).
                return None
            except Exception as exc:
                where = f"{self.description}: reading the existing dataset failed ({path} at revision {revision})"
                raise _failure(DatasetReadError, where, exc)
            return Path(local).read_bytes()

    def list_files(self, revision: str) -> frozenset[str]:
        return frozenset(self.api.list_repo_files(self.repo_id, repo_type="dataset", revision=revision))

    def file_link(self, path: str) -> str:
        return f"{redact_url(self.api.endpoint)}/datasets/{self.repo_id}/blob/main/{path}"

    def commit(
        self, files: dict[str, bytes], *, parent: Optional[str], message: str, delete: Sequence[str] = ()
    ) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        try:
            if parent is None:
                parent = self._create()
            # The Hub refuses a whole commit that deletes a missing path: delete only what the parent holds.
            present = self.list_files(parent) if delete else frozenset()
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=io.BytesIO(data)) for name, data in files.items()]
            operations += [CommitOperationDelete(path_in_repo=name) for name in delete if name in present]
            info = self.api.create_commit(
                self.repo_id, operations, commit_message=message, repo_type="dataset", parent_commit=parent
            )
        except HfHubHTTPError as exc:
            if exc.response is not None and exc.response.status_code == 412:
                raise _failure(PublishConflict, f"{self.description} changed since revision {parent}; nothing written", exc)
            raise _failure(RuntimeError, f"{self.description}: publishing failed", exc)
        return info.commit_url

    def _create(self) -> str:
        """Create the repo for a first publish and return its head. exist_ok=False, since "already
        exists" (409) means someone created it since it was read, or it is private and this token
        may not read it (repo_info said 404): neither may be written over blindly."""
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self.api.create_repo(self.repo_id, repo_type="dataset", exist_ok=False)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise _failure(PermissionError, f"{self.description}: HF_TOKEN may not create the repo (HTTP {status})", exc)
            if status != 409:
                raise
            if self.head() is not None:
                raise _failure(PublishConflict, f"{self.description} was created since it was read; nothing written", exc)
            raise _failure(
                PermissionError,
                f"{self.description}: the repo exists but HF_TOKEN cannot read it (private?); check the token's access to it",
                exc,
            )
        parent = self.head()
        # Ours since a moment ago: a dataset in it means another writer got in first; do not overwrite it.
        if parent is None or any(self.read_file(name, parent) is not None for name in (DATASET_FILE, LEGACY_DATASET_FILE)):
            raise PublishConflict(f"{self.description} changed right after it was created; nothing written")
        return parent


def _prepare_client(endpoint: Optional[str]) -> None:
    """Xet storage and telemetry exist only on huggingface.co: for any other endpoint (a mirror, a
    local server) upload through LFS and send no telemetry, whatever the environment says."""
    host = urlsplit(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or ""
    if host == "huggingface.co" or host.endswith(".huggingface.co"):
        return
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_XET = True
    constants.HF_HUB_DISABLE_TELEMETRY = True
