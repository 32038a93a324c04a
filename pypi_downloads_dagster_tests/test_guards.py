"""The publish guards and the integrity checks, called directly on small frames."""

import numpy as np
import pandas as pd
import pytest

from pypi_downloads_dagster.dataset.guards import (
    Baseline,
    IndexTooShort,
    PublishGuards,
    changed_rows,
    check_index_length,
    guard_figures,
    integrity_checks,
    next_baseline,
)
from pypi_downloads_dagster.services.pypi_index import build_project_index
from pypi_downloads_dagster.dataset.schema import conform

NOW = 1_760_000_000.0


def frame(rows):
    """rows: (name, day, week, month, status, updated_at)."""
    data = pd.DataFrame(rows, columns=["name", "last_day", "last_week", "last_month", "status", "updated_at"])
    data.insert(1, "url", ["https://pypi.org/simple/" + n.lower() + "/" for n in data["name"]])
    return conform(data)


def valid(n, month=30, at=NOW - 40 * 86400, prefix="p"):
    return [(f"{prefix}{i:03d}", 1, 7, month, "valid", at) for i in range(n)]


def by_name(figures):
    return {figure.name: figure for figure in figures}


@pytest.mark.parametrize("field", ["max_row_loss_share", "max_counted_row_loss_share", "max_month_total_drop_share", "max_valid_to_empty_share"])
@pytest.mark.parametrize("value", [-0.01, 1.01, 5, float("nan"), float("inf")])
def test_every_share_is_validated(field, value):
    with pytest.raises(ValueError, match=field):
        PublishGuards(**{field: value})


def test_counts_reset_to_null_fail_counted_rows_and_total_even_with_all_rows_kept():
    published = frame(valid(100))
    reset = frame([(f"p{i:03d}", None, None, None, "empty", NOW) for i in range(100)])
    figures = by_name(guard_figures(published, reset, PublishGuards()))
    assert figures["rows"].passed
    assert not figures["rows with counts"].passed and not figures["total of last_month"].passed
    assert not figures["previously valid rows fetched again that turned empty"].passed
    assert "100 of 100 turned empty" in figures["previously valid rows fetched again that turned empty"].describe()


def test_a_few_rows_turning_empty_is_normal():
    published = frame(valid(100))
    new = frame([(f"p{i:03d}", None, None, None, "empty", NOW) if i < 9 else (f"p{i:03d}", 1, 7, 30, "valid", NOW) for i in range(100)])
    figure = by_name(guard_figures(published, new, PublishGuards(max_valid_to_empty_share=0.01)))[
        "previously valid rows fetched again that turned empty"
    ]
    assert figure.passed, "9 rows are under the minimum of 10"
    # Only rows fetched again count: rows carried over unchanged are not in the denominator.
    new10 = frame([(f"p{i:03d}", None, None, None, "empty", NOW) if i < 10 else (f"p{i:03d}", 1, 7, 30, "valid", NOW - 40 * 86400) for i in range(100)])
    figure = by_name(guard_figures(published, new10, PublishGuards(max_valid_to_empty_share=0.5)))[
        "previously valid rows fetched again that turned empty"
    ]
    assert not figure.passed and "10 of 10" in figure.detail


def test_the_high_water_mark_catches_a_slow_decline_and_an_override_resets_it():
    guards = PublishGuards()
    baseline = Baseline(rows=100, rows_with_counts=100)
    published = frame(valid(97))
    new = frame(valid(94))
    figures = by_name(guard_figures(published, new, guards, baseline))
    assert not figures["rows"].passed and figures["rows"].before == 100
    # Accepted with a raised setting: the accepted figure becomes the new mark.
    assert next_baseline(baseline, published, new) == Baseline(rows=94, rows_with_counts=94)
    # Within the default share the mark keeps its high.
    assert next_baseline(baseline, published, frame(valid(96))) == Baseline(rows=100, rows_with_counts=100)
    assert next_baseline(Baseline(), frame([]), frame(valid(5))) == Baseline(rows=5, rows_with_counts=5)
    # The published dataset's own figures count as marks too (files written before marks existed).
    assert next_baseline(Baseline(), frame(valid(100)), frame(valid(96))) == Baseline(rows=100, rows_with_counts=100)


def test_index_length_guard():
    check_index_length(95, 100, 0.05)
    with pytest.raises(IndexTooShort, match="the index lists 94 projects but the published dataset has 100 rows"):
        check_index_length(94, 100, 0.05)
    check_index_length(0, 0, 0.05)


def test_integrity_checks_find_each_violation_and_block_only_on_changed_rows():
    index = build_project_index(["a", "b", "c", "d", "e"], fmt="json").projects
    published = frame([("a", 1, 2, 3, "valid", NOW), ("b", 5, 2, 9, "valid", NOW)])  # b: day > week, carried over
    new = frame(
        [
            ("a", 1, 2, 3, "valid", NOW),
            ("b", 5, 2, 9, "valid", NOW),
            ("c", None, 1, 1, "valid", NOW),  # valid without every count
            ("d", 1, 1, 1, "empty", NOW),  # empty with counts
            ("x", None, None, None, None, None),  # not on the index; e missing
        ]
    )
    changed = changed_rows(published, new)
    assert changed.tolist() == [False, False, True, True, True]
    checks = {check.name: check for check in integrity_checks(new, index, changed)}
    assert checks["one_row_per_index_project"].violations == 2
    assert checks["counts_match_status"].violations == 2 and set(checks["counts_match_status"].examples) == {"c", "d"}
    assert checks["counts_ordered"].passed and checks["counts_ordered"].carried == 1
    assert checks["unique_normalized_names"].passed


def test_duplicate_spellings_are_found():
    index = build_project_index(["Foo.Bar"], fmt="json").projects
    new = frame([("Foo.Bar", None, None, None, None, None), ("foo-bar", None, None, None, None, None)])
    checks = {check.name: check for check in integrity_checks(new, index, np.ones(2, dtype=bool))}
    assert checks["unique_normalized_names"].violations == 2
