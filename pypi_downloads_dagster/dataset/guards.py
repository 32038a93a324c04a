"""What protects the published dataset: figures of a new dataset compared with the published one,
and the checks a dataset must pass before it may be published. Plain functions on DataFrames.

A publish is refused (nothing is written) when the new dataset loses rows, rows with counts, a
share of its monthly downloads, or when many rows that had counts turn `empty` at once. Row
figures are also held against a high-water mark carried in the published file, so a slow decline
of a few percent per publish is caught too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import pandas as pd

from pypi_downloads_dagster.dataset.schema import STATUS_EMPTY, STATUS_VALID, normalize_names


def _keys(frame: pd.DataFrame) -> pd.Series:
    """The frame's normalized names: its `normalized` column when the caller added one (normalizing
    900k names takes seconds, so a publish does it once per frame), else computed."""
    return frame["normalized"] if "normalized" in frame.columns else normalize_names(frame["name"])


class PublishRefused(RuntimeError):
    """The new dataset fails a guard against the published one, or an integrity check; nothing was written."""


class IndexTooShort(RuntimeError):
    """The index lists far fewer projects than the published dataset holds: a partial list, not PyPI shrinking."""


#: Below this many rows turned empty, the share guard does not apply: a handful of small
#: projects going quiet in a small refresh is normal, not a broken stats endpoint.
MIN_TURNED_EMPTY = 10


@dataclasses.dataclass(frozen=True)
class PublishGuards:
    """How much worse than the published dataset a new one may be. Each is a share in [0, 1]."""

    max_row_loss_share: float = 0.05
    max_counted_row_loss_share: float = 0.05
    max_month_total_drop_share: float = 0.25
    max_valid_to_empty_share: float = 0.2

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
                raise ValueError(f"{field.name} must be a share between 0 and 1, got {value!r}")


DEFAULT_GUARDS = PublishGuards()


@dataclasses.dataclass(frozen=True)
class Baseline:
    """High-water marks of the row figures over earlier publishes (kept in the published file)."""

    rows: int = 0
    rows_with_counts: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "Baseline":
        data = data or {}
        return cls(**{f.name: int(data.get(f.name, 0) or 0) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class GuardFigure:
    """One guarded figure: its value before (published, or the high-water mark) and after."""

    name: str
    before: float
    after: float
    allowed_share: float
    setting: str  # the setting that raises the allowance
    passed: bool
    detail: str = ""

    @property
    def loss_share(self) -> float:
        return (self.before - self.after) / self.before if self.before else 0.0

    def describe(self) -> str:
        text = (
            f"{self.name}: {self.before:,.0f} -> {self.after:,.0f} ({-self.loss_share:+.1%}; "
            f"allowed loss {self.allowed_share:.1%}, setting {self.setting})"
        )
        return f"{text}; {self.detail}" if self.detail else text


def dataset_figures(frame: pd.DataFrame) -> dict[str, int]:
    """The figures the guards compare: rows, rows with counts, and the total of `last_month`."""
    return {
        "rows": len(frame),
        "rows_with_counts": int((frame["status"] == STATUS_VALID).sum()),
        "last_month_total": int(frame["last_month"].fillna(0).astype("int64").sum()),
    }


def _loss_figure(name: str, before: float, after: float, share: float, setting: str) -> GuardFigure:
    # Compared as a loss, with room for float rounding: losing exactly the allowed share passes.
    return GuardFigure(name, before, after, share, setting, passed=before - after <= before * share + 1e-9)


def guard_figures(
    published: pd.DataFrame, new: pd.DataFrame, guards: PublishGuards, baseline: Baseline = Baseline()
) -> list[GuardFigure]:
    """Every guard figure of `new` against `published` (and the high-water marks in `baseline`)."""
    old, now = dataset_figures(published), dataset_figures(new)
    figures = [
        _loss_figure("rows", max(old["rows"], baseline.rows), now["rows"], guards.max_row_loss_share, "max_row_loss_share"),
        _loss_figure(
            "rows with counts",
            max(old["rows_with_counts"], baseline.rows_with_counts),
            now["rows_with_counts"],
            guards.max_counted_row_loss_share,
            "max_counted_row_loss_share",
        ),
        _loss_figure(
            "total of last_month", old["last_month_total"], now["last_month_total"], guards.max_month_total_drop_share,
            "max_month_total_drop_share",
        ),
    ]
    turned, refetched = valid_turned_empty(published, new)
    share = turned / refetched if refetched else 0.0
    figures.append(
        GuardFigure(
            "previously valid rows fetched again that turned empty",
            refetched,
            refetched - turned,
            guards.max_valid_to_empty_share,
            "max_valid_to_empty_share",
            passed=turned < MIN_TURNED_EMPTY or share <= guards.max_valid_to_empty_share,
            detail=f"{turned:,} of {refetched:,} turned empty",
        )
    )
    return figures


def valid_turned_empty(published: pd.DataFrame, new: pd.DataFrame) -> tuple[int, int]:
    """(rows `valid` in `published` that are `empty` in `new`, rows `valid` in `published` fetched again)."""
    is_valid = (published["status"] == STATUS_VALID).to_numpy()
    before = published.loc[is_valid, ["updated_at"]]
    if not len(before):
        return 0, 0
    keys = _keys(published)[is_valid]
    after = new.assign(normalized=_keys(new)).drop_duplicates("normalized").set_index("normalized")
    after = after.reindex(keys)
    refetched = after["updated_at"].to_numpy(dtype="float64", na_value=np.nan) != before["updated_at"].to_numpy(dtype="float64", na_value=np.nan)
    refetched &= after["status"].notna().to_numpy()
    turned = refetched & (after["status"] == STATUS_EMPTY).to_numpy()
    return int(turned.sum()), int(refetched.sum())


def next_baseline(
    baseline: Baseline, published: pd.DataFrame, new: pd.DataFrame, defaults: PublishGuards = DEFAULT_GUARDS
) -> Baseline:
    """The high-water marks to carry into the published file: the highest figures seen, the
    published dataset's included. A figure that only passed because a setting was raised above
    its default becomes the new mark: the operator accepted it."""
    before, after = dataset_figures(published), dataset_figures(new)

    def mark(name: str, share: float) -> int:
        high = max(getattr(baseline, name), before[name])
        return max(high, after[name]) if after[name] >= high * (1.0 - share) else after[name]

    return Baseline(
        rows=mark("rows", defaults.max_row_loss_share),
        rows_with_counts=mark("rows_with_counts", defaults.max_counted_row_loss_share),
    )


def check_index_length(index_projects: int, published_rows: int, max_row_loss_share: float) -> None:
    """Raise IndexTooShort when the index lists far fewer projects than the published dataset has
    rows: publishing from it would drop the rows of every project missing from a partial list."""
    if index_projects < published_rows * (1.0 - max_row_loss_share):
        raise IndexTooShort(
            f"the index lists {index_projects:,} projects but the published dataset has {published_rows:,} rows "
            f"({(published_rows - index_projects) / published_rows:.1%} fewer; allowed {max_row_loss_share:.1%}): "
            "the index looks partial (a CDN or proxy serving part of it?). If projects really left PyPI, "
            "raise max_row_loss_share for one run."
        )


# ---- integrity of the dataset about to be published -------------------------------------------


#: Every check on the dataset about to be published, by the name the UI shows.
CHECK_DESCRIPTIONS = {
    "one_row_per_index_project": "Exactly one row for each project on the index, and none for projects not on it.",
    "unique_normalized_names": "No two rows share a normalized project name.",
    "counts_match_status": "`valid` rows have all three counts; `empty` and never-fetched rows have none; "
    "status is set exactly when updated_at is.",
    "counts_ordered": "last_day <= last_week <= last_month on every row with counts.",
    "publish_guards": "Rows, rows with counts, the total of last_month and rows turned empty, against the published dataset.",
}


@dataclasses.dataclass(frozen=True)
class IntegrityCheck:
    """One check on the dataset about to be published. `violations` count rows this publish
    changes (they block it); `carried` count rows taken over unchanged from the published file
    (reported only: they were published before, and blocking on them would block every publish)."""

    name: str  # a key of CHECK_DESCRIPTIONS
    violations: int
    carried: int = 0
    examples: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.violations == 0


def integrity_checks(frame: pd.DataFrame, index: pd.DataFrame, changed: np.ndarray) -> list[IntegrityCheck]:
    """The checks on `frame` (the new dataset) against the index it was built for. `changed` marks
    rows that differ from the published file."""
    normalized = _keys(frame)
    # Index lookups, not Series.isin: isin over Arrow strings goes name by name (seconds at 900k).
    listed = pd.Index(index["normalized"]).get_indexer(normalized) >= 0
    present = pd.Index(normalized.drop_duplicates())
    missing_names = index["normalized"][present.get_indexer(index["normalized"]) < 0]
    missing = len(missing_names)
    extra = int((~listed).sum())
    duplicated = normalized.duplicated(keep=False).to_numpy()

    counts = frame[["last_day", "last_week", "last_month"]]
    has_all = counts.notna().all(axis=1).to_numpy()
    has_any = counts.notna().any(axis=1).to_numpy()
    status = frame["status"]
    valid = (status == STATUS_VALID).to_numpy()
    fetched = frame["updated_at"].notna().to_numpy()
    mismatched = (valid & ~has_all) | (~valid & has_any) | (status.notna().to_numpy() != fetched)
    day, week, month = (counts[c].fillna(0).to_numpy(dtype="int64") for c in ("last_day", "last_week", "last_month"))
    disordered = has_all & ((day > week) | (week > month))

    def rows(mask: np.ndarray) -> tuple[int, int, tuple[str, ...]]:
        examples = tuple(frame.loc[mask & changed, "name"].head(5))
        return int((mask & changed).sum()), int((mask & ~changed).sum()), examples

    return [
        IntegrityCheck(
            "one_row_per_index_project",
            missing + extra,
            examples=tuple(missing_names.head(5)) + tuple(frame.loc[~listed, "name"].head(5)),
        ),
        IntegrityCheck("unique_normalized_names", *rows(duplicated)),
        IntegrityCheck("counts_match_status", *rows(mismatched)),
        IntegrityCheck("counts_ordered", *rows(disordered)),
    ]


def changed_rows(published: pd.DataFrame, new: pd.DataFrame) -> np.ndarray:
    """Which rows of `new` differ from the row of the same normalized name in `published` (new rows included)."""
    old = published.assign(normalized=_keys(published)).drop_duplicates("normalized").set_index("normalized")
    keys = _keys(new)
    known = old.index.get_indexer(keys) >= 0
    old = old.reindex(keys).reset_index(drop=True)
    mine = new.reset_index(drop=True)
    same = known & (mine["status"].fillna("") == old["status"].fillna("")).to_numpy()
    for column in ("last_day", "last_week", "last_month", "updated_at"):
        a = mine[column].to_numpy(dtype="float64", na_value=np.nan)
        b = old[column].to_numpy(dtype="float64", na_value=np.nan)
        same &= (a == b) | (np.isnan(a) & np.isnan(b))
    return ~same
