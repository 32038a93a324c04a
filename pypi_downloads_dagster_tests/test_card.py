"""Dataset card: Hub metadata round trip, and every number in it checked against pandas."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest
from huggingface_hub import DatasetCard

from pypi_downloads_dagster.card import (
    SAMPLE_ROWS,
    dataset_overview,
    markdown_cell,
    render_dataset_card,
    sample_rows,
    size_category,
)
from pypi_downloads_dagster.charts import CHART_FILES
from pypi_downloads_dagster.schema import COLUMNS, COUNT_COLUMNS, conform, empty_dataset
from pypi_downloads_dagster_tests.synthetic import synthetic_dataset

REPO = "someone/pypi-downloads"
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def make_frame(rows: int, seed: int = 2) -> pd.DataFrame:
    return synthetic_dataset(rows, seed=seed, valid_share=0.5, empty_share=0.2)


def section(card: str, heading_start: str) -> str:
    """The text of the `## ...` section whose heading starts with `heading_start`."""
    parts = re.split(r"^## ", card, flags=re.MULTILINE)
    matches = [p for p in parts if p.startswith(heading_start)]
    assert len(matches) == 1, f"expected one section {heading_start!r}"
    return matches[0]


def table(text: str) -> list[list[str]]:
    """Rows of the first Markdown table in `text` (header and rule dropped), cells unescaped."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[cell.strip().replace("\\|", "|") for cell in UNESCAPED_PIPE.split(line)[1:-1]] for line in lines]
    return rows[2:]


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.fixture(scope="module")
def frame():
    return make_frame(3000)


@pytest.fixture(scope="module")
def card(frame):
    return render_dataset_card(frame, repo_id=REPO)


# --- metadata ------------------------------------------------------------------------------------


def test_front_matter_round_trip(card):
    data = DatasetCard(card).data
    assert data.configs == [{"config_name": "default", "data_files": "dataset.parquet"}]
    assert data.license == "apache-2.0"
    assert data.size_categories == ["1K<n<10K"]
    assert data.source_datasets == ["pypistats"]
    assert data.language == ["en"]
    assert {"pypi", "python", "downloads", "pypistats"} <= set(data.tags)
    assert data.pretty_name


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1_000, "1K<n<10K"),
        (9_999, "1K<n<10K"),
        (10_000, "10K<n<100K"),
        (999_999, "100K<n<1M"),
        (1_000_000, "1M<n<10M"),
        (10**12 - 1, "100B<n<1T"),
        (10**12, "n>1T"),
    ],
)
def test_size_category_boundaries(rows, expected):
    assert size_category(rows) == expected


def test_size_category_follows_the_row_count():
    assert DatasetCard(render_dataset_card(make_frame(999), repo_id=None)).data.size_categories == ["n<1K"]
    assert DatasetCard(render_dataset_card(make_frame(1000), repo_id=None)).data.size_categories == ["1K<n<10K"]


def test_deterministic(frame, card):
    assert render_dataset_card(frame.copy(), repo_id=REPO) == card


def test_empty_dataset():
    text = render_dataset_card(empty_dataset(), repo_id=REPO)
    data = DatasetCard(text).data
    assert data.size_categories == ["n<1K"]
    assert data.configs == [{"config_name": "default", "data_files": "dataset.parquet"}]
    assert "never" in section(text, "Overview")
    assert not table(section(text, "Top"))


# --- body ----------------------------------------------------------------------------------------


def test_overview_counts_and_last_updated(frame, card):
    rows = {row[0]: row[1:] for row in table(section(card, "Overview"))}
    total = len(frame)
    with_data = int(frame["updated_at"].notna().sum())
    valid = int((frame["status"] == "valid").sum())
    assert rows["Packages"][0] == f"{total:,}"
    [with_data_row] = [v for k, v in rows.items() if k.startswith("With data")]
    [valid_row] = [v for k, v in rows.items() if k.startswith("Non-empty")]
    assert with_data_row == [f"{with_data:,}", f"{100 * with_data / total:.1f}%"]
    assert valid_row == [f"{valid:,}", f"{100 * valid / total:.1f}%"]
    # The newest fetch's date, not today's: the card must not change by itself.
    newest = dt.datetime.fromtimestamp(frame["updated_at"].max(), dt.UTC).date().isoformat()
    [last] = [v for k, v in rows.items() if k.startswith("Last updated")]
    assert last[0] == newest == "2024-02-29"


def test_stale_is_relative_to_the_newest_fetch(frame):
    overview = dataset_overview(frame)
    newest = frame["updated_at"].max()
    fresh = (frame["updated_at"] >= newest - 30 * 86400).sum()
    assert overview["stale"] == len(frame) - fresh
    assert 0 < overview["stale"] - int(frame["updated_at"].isna().sum()) < overview["with_data"]


def test_schema_table_lists_every_column(card):
    assert [row[0].strip("`") for row in table(section(card, "Schema"))] == list(COLUMNS)


def test_charts_embedded_with_relative_links(frame, card):
    for name in CHART_FILES:
        assert re.search(rf"!\[[^\]]+\]\({re.escape(name)}\)", card)
    custom = render_dataset_card(frame, repo_id=REPO, chart_files=("charts/a.png",))
    assert "](charts/a.png)" in custom and "](download_distribution.png)" not in custom
    assert "## Charts" not in render_dataset_card(frame, repo_id=REPO, chart_files=())


def test_top_table_order_and_count(frame, card):
    rows = table(section(card, "Top"))
    expected = frame.dropna(subset=["last_month"]).sort_values(["last_month", "name"], ascending=[False, True]).head(20)
    assert len(rows) == 20
    assert [row[0] for row in rows] == [str(i) for i in range(1, 21)]
    assert [row[1] for row in rows] == expected["name"].tolist()
    assert [number(row[4]) for row in rows] == expected["last_month"].astype(float).tolist()
    assert all("," in row[4] for row in rows if number(row[4]) >= 1000)


def test_statistics_match_pandas(frame, card):
    rows = table(section(card, "Download statistics"))
    assert len(rows) == 3
    for column, row in zip(COUNT_COLUMNS, rows):
        series = frame[column].dropna().astype("float64")
        packages, total, average, median, maximum = (number(cell) for cell in row[1:])
        assert packages == len(series)
        assert total == series.sum()
        assert average == pytest.approx(series.mean(), abs=0.05)
        assert median == series.median()
        assert maximum == series.max()


def test_statistics_by_hand():
    small = conform(
        pd.DataFrame(
            {
                "name": ["a", "b", "c", "d"],
                "url": ["u"] * 4,
                "last_day": [1, 2, None, 1_000_000],
                "last_week": [1, 2, None, 3],
                "last_month": [1, 2, None, 4],
                "status": ["valid", "valid", "empty", "valid"],
                "updated_at": [1.0, 2.0, 3.0, 4.0],
            }
        )
    )
    rows = table(section(render_dataset_card(small, repo_id=None), "Download statistics"))
    assert rows[0][1:] == ["3", "1,000,003", "333,334.3", "2", "1,000,000"]
    assert rows[2][1:] == ["3", "7", "2.3", "2", "4"]


def test_sample_is_fetched_rows_and_deterministic(frame, card):
    sample = sample_rows(frame)
    assert len(sample) == SAMPLE_ROWS
    assert sample["updated_at"].notna().all()
    assert sample.index.is_monotonic_increasing
    assert sample.equals(sample_rows(frame.copy()))
    rows = table(section(card, "Sample"))
    assert [row[0] for row in rows] == sample["name"].tolist()
    assert {row[5] for row in rows} <= {"valid", "empty"}


def test_sample_of_a_small_or_unfetched_dataset():
    unfetched = make_frame(5).assign(updated_at=np.nan, status=None)
    unfetched = conform(unfetched.assign(**{c: pd.NA for c in COUNT_COLUMNS}))
    assert len(sample_rows(unfetched)) == 5
    assert sample_rows(empty_dataset()).empty


def test_pipes_in_names_are_escaped():
    frame = make_frame(50)
    frame.loc[frame["last_month"].idxmax(), "name"] = "odd|name"
    text = render_dataset_card(frame, repo_id=None)
    assert "odd\\|name" in text and "odd|name" not in text
    # Every table row has as many cells as its header.
    for body in re.split(r"\n\n", text):
        lines = [line for line in body.splitlines() if line.startswith("|")]
        if lines:
            assert len({len(UNESCAPED_PIPE.findall(line)) for line in lines}) == 1, body


def test_markdown_cell():
    assert markdown_cell("a|b") == "a\\|b"
    assert markdown_cell("a\\b") == "a\\\\b"
    assert markdown_cell("two\nlines") == "two lines"
    assert markdown_cell(None) == markdown_cell(pd.NA) == markdown_cell(float("nan")) == "—"


def test_usage_names_the_repo(card, frame):
    assert f'pd.read_parquet("hf://datasets/{REPO}/dataset.parquet")' in card
    assert f'load_dataset("{REPO}"' in card
    assert "hf://" not in render_dataset_card(frame, repo_id=None)
