"""Publishing one consistent snapshot: read the repo head, merge every stored fetch onto exactly
that, check and guard the result, render the files from that frame and commit them with that head
as parent. When someone else committed in between (412), read and merge again, a bounded number
of times. Nothing read from a file another run may have rewritten decides what is committed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Optional

import pandas as pd

from pypi_downloads_dagster.dataset.frames import MergeStats, merge_dataset
from pypi_downloads_dagster.dataset.guards import (
    Baseline,
    GuardFigure,
    IntegrityCheck,
    PublishGuards,
    changed_rows,
    guard_figures,
    integrity_checks,
    next_baseline,
)
from pypi_downloads_dagster.publishing.hub import DatasetRepo, ExistingDataset, PublishConflict, read_existing_dataset
from pypi_downloads_dagster.dataset.schema import DATASET_FILE, LEGACY_DATASET_FILE, normalize_names

#: Reads and merges again after a conflicting commit before the publish gives up.
PUBLISH_ATTEMPTS = 3


@dataclasses.dataclass(frozen=True)
class PublishOutcome:
    committed: bool
    commit: Optional[str]  # commit URL or revision; None when nothing changed
    changed_files: tuple[str, ...]


@dataclasses.dataclass
class Publication:
    """A snapshot built on one head: the frame, what merging did, the guard figures and checks,
    and once published, the outcome. `refusal` says why it may not be published (None: it may)."""

    existing: ExistingDataset
    frame: pd.DataFrame
    stats: MergeStats
    figures: list[GuardFigure]
    checks: list[IntegrityCheck]
    baseline: Baseline
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    outcome: Optional[PublishOutcome] = None
    attempts: int = 1

    @property
    def refusal(self) -> Optional[str]:
        problems = [f.describe() for f in self.figures if not f.passed]
        problems += [f"{c.name}: {c.violations:,} rows, e.g. {list(c.examples)}" for c in self.checks if not c.passed]
        if not problems:
            return None
        return (
            "refusing to publish: " + "; ".join(problems)
            + ". If a loss is real (projects left PyPI, downloads fell), raise that setting for one run."
        )


def prepare_publication(
    existing: ExistingDataset, projects: pd.DataFrame, fetched: pd.DataFrame, guards: PublishGuards, *, now: Optional[float] = None
) -> Publication:
    """The new dataset on top of `existing` (pure: no I/O), with its figures and checks."""
    frame, stats = merge_dataset(existing.frame, projects, fetched, now=now)
    # Normalized once per frame for every figure and check below.
    published = existing.frame.assign(normalized=normalize_names(existing.frame["name"]))
    keyed = frame.assign(normalized=normalize_names(frame["name"]))
    figures = guard_figures(published, keyed, guards, existing.baseline)
    checks = integrity_checks(keyed, projects, changed_rows(published, keyed))
    return Publication(existing, frame, stats, figures, checks, next_baseline(existing.baseline, existing.frame, frame))


def publish_snapshot(
    repo: DatasetRepo,
    *,
    projects: pd.DataFrame,
    fetched: pd.DataFrame,
    guards: PublishGuards,
    render_files: Callable[[Publication], dict[str, bytes]],
    message: Callable[[Publication], str],
    attempts: int = PUBLISH_ATTEMPTS,
    now: Optional[float] = None,
) -> Publication:
    """Build and publish one snapshot (see the module docstring). Returns the publication; when it
    is refused (`refusal` set) nothing was written. `render_files(publication)` gives every file
    to publish, `dataset.parquet` included. Raises PublishConflict after `attempts` conflicts."""
    for attempt in range(1, attempts + 1):
        existing = read_existing_dataset(repo)
        publication = prepare_publication(existing, projects, fetched, guards, now=now)
        publication.attempts = attempt
        if publication.refusal:
            return publication
        publication.files = render_files(publication)
        try:
            publication.outcome = commit_changes(repo, existing, publication.files, message(publication))
            return publication
        except PublishConflict:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def commit_changes(repo: DatasetRepo, existing: ExistingDataset, files: dict[str, bytes], message: str) -> PublishOutcome:
    """Commit `files` on top of the revision `existing` was read at, removing the legacy
    `dataset.csv` in the same commit (one source of truth); nothing when nothing would change."""
    stale = [LEGACY_DATASET_FILE] if DATASET_FILE in files and LEGACY_DATASET_FILE in existing.files else []
    changed = tuple(name for name, data in files.items() if not _same_as_repo(repo, existing, name, data))
    if not changed and not stale:
        return PublishOutcome(False, None, ())
    commit = repo.commit(files, parent=existing.revision, message=message, delete=stale)
    return PublishOutcome(True, commit, changed + tuple(f"{name} (deleted)" for name in stale))


def _same_as_repo(repo: DatasetRepo, existing: ExistingDataset, name: str, data: bytes) -> bool:
    if existing.revision is None or name not in existing.files:
        return False
    if name == DATASET_FILE and existing.source == DATASET_FILE:
        return existing.sha256 == hashlib.sha256(data).hexdigest()  # already downloaded once; no second read
    return repo.read_file(name, existing.revision) == data


def publish_files(
    repo: DatasetRepo,
    build: Callable[[Optional[str], frozenset[str]], dict[str, bytes]],
    message: str,
    *,
    attempts: int = PUBLISH_ATTEMPTS,
) -> PublishOutcome:
    """Commit files that sit beside the dataset (the history) on the current head: `build(head,
    files at head)` gives them (it may read the head's own files to merge with). Files equal to
    the head's are left out; nothing at all is committed when nothing changes. Read and built
    again after a conflicting commit, up to `attempts` times."""
    for attempt in range(1, attempts + 1):
        head = repo.head()
        present = repo.list_files(head) if head else frozenset()
        files = build(head, present)
        changed = {name: data for name, data in files.items() if not (head and name in present and repo.read_file(name, head) == data)}
        if not changed:
            return PublishOutcome(False, None, ())
        try:
            return PublishOutcome(True, repo.commit(changed, parent=head, message=message), tuple(sorted(changed)))
        except PublishConflict:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")
