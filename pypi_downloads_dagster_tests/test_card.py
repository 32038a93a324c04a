"""Dataset card: Hub metadata round trip, and every number in it checked against pandas."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from pypi_downloads_dagster.publishing.card import (
    READER_TYPES,
    SAMPLE_ROWS,
    HistoryInfo,
    card_without_front_matter,
    dataset_overview,
    markdown_cell,
    render_dataset_card,
    sample_rows,
    size_category,
)
from pypi_downloads_dagster.publishing.charts import CHART_FILES, TREND_CHART
from pypi_downloads_dagster.dataset.schema import COLUMNS, COUNT_COLUMNS, conform, dataset_to_parquet, empty_dataset
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
    blocks = [block for block in text.split("\n\n") if block.startswith("|")]
    lines = blocks[0].splitlines() if blocks else []
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
    # `source_datasets` takes Hub dataset ids; pypistats is not one, so it is named in the text instead.
    assert data.source_datasets is None and "source_datasets" not in card.split("\n---\n", 1)[0]
    assert "pypistats.org" in DatasetCard(card).text
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


def utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_updated_at_is_shown_as_utc_time(frame, card):
    by_name = frame.set_index("name")["updated_at"]
    sample, top = table(section(card, "Sample")), table(section(card, "Top"))
    assert [row[6] for row in sample] == [utc(by_name[row[0]]) for row in sample]
    assert [row[5] for row in top] == [utc(by_name[row[1]]) for row in top]
    assert "updated_at (UTC)" in section(card, "Sample") and "updated_at (UTC)" in section(card, "Top")
    # The file keeps the floats: no card rendering changes the frame.
    assert str(frame["updated_at"].dtype) == "float64"


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


# --- source, limitations, citation, readers ------------------------------------------------------


def test_source_and_terms(card):
    text = section(card, "Source and terms")
    for phrase in ("pypistats.org", "bigquery-public-data.pypi", "excluding mirrors", "gentle", "public"):
        assert phrase in text, phrase


def test_limitations(card):
    text = section(card, "Limitations")
    assert "rolling basis" in text and "different `updated_at`" in text
    assert "Mirrors are excluded" in text
    assert "`empty` means no data in the last 30 days" in text
    assert "lag by a day" in text


def bibtex(card: str) -> tuple[str, dict[str, str]]:
    [entry] = re.findall(r"```bibtex\n(.*?)\n```", section(card, "Citation"), flags=re.DOTALL)
    key = re.match(r"@misc\{([^,]+),\n", entry).group(1)
    fields = dict(re.findall(r"^  (\w+)\s*= \{(.*)\},?$", entry, flags=re.MULTILINE))
    assert entry.count("{") == entry.count("}") and entry.endswith("\n}")
    return key, fields


def test_citation_names_the_repo_and_the_snapshot(frame, card):
    key, fields = bibtex(card)
    assert key == "someone_pypi_downloads"
    assert fields["howpublished"] == f"\\url{{https://huggingface.co/datasets/{REPO}}}"
    assert fields["author"] == "someone" and fields["title"] == "PyPI Download Counts"
    # The newest fetch's year, not today's.
    assert fields["year"] == "2024" and "2024-02-29" in fields["note"]
    key, fields = bibtex(render_dataset_card(empty_dataset(), repo_id=None))
    assert key == "pypi_download_counts" and set(fields) == {"title", "note"}


def test_schema_section_says_how_each_reader_types_the_counts(card):
    text = section(card, "Schema")
    for reader, call, count_type, null in READER_TYPES:
        assert f"| {reader} | {call} | `{count_type}` | `{null}` |" in text
    assert "float64 Unix seconds" in text


def test_card_without_front_matter(card):
    body = card_without_front_matter(card)
    assert body.startswith("# PyPI Download Counts\n")
    assert not body.lstrip().startswith("---") and "configs:" not in body and "license:" not in body
    headings = re.findall(r"^#{1,2} .*$", card, flags=re.MULTILINE)
    assert re.findall(r"^#{1,2} .*$", body, flags=re.MULTILINE) == headings and len(headings) > 8
    assert body == DatasetCard(card).text.lstrip("\n")


def test_card_without_front_matter_leaves_other_text_alone():
    assert card_without_front_matter("# Title\n\n---\n\nafter a rule\n") == "# Title\n\n---\n\nafter a rule\n"
    assert card_without_front_matter("---\n---\n# Title\n") == "# Title\n"
    assert card_without_front_matter("---\r\nlicense: mit\r\n---\r\n\r\nbody\r\n---\r\n") == "body\r\n---\r\n"


# --- the old card is unchanged -----------------------------------------------------------------------

#: sha256 of the card as `render_dataset_card` rendered it before it learned `counts_source`,
#: `history` and `cross_check` (captured from that version with the same inputs). Called the old way
#: it must still give these bytes: a card that changes by itself makes a commit on every publish.
#: (A new huggingface_hub or pandas that formats the YAML or numbers differently changes them too;
#: then recapture them from the previous release of this file.)
OLD_CARD_SHA256 = {
    "default": "0d19a4d8f6d69e4255424d4bd484e3940563e80c18e09d18535461e265f05b69",
    "no-repo": "7284b39d8ca933a14fd61ca4ed33ef879805b13aad37ce216dd09f83fa1d2ebd",
    "empty": "23878f030255163d8489a2903224b252a2249e09b149b96892fbb476883f7634",
    "refresh-status": "a443a110c90cf8508f61bc1961dfa83ca5b31889c267c91e51dd4ca156afb5d7",
    "no-charts": "1412cd1f087084c4244da3db6cda7f40f640faf58a76c911db25a5f0bbe68844",
}


def old_way_cards(frame: pd.DataFrame, **new_arguments) -> dict[str, str]:
    small = make_frame(50)
    return {
        "default": render_dataset_card(frame, repo_id=REPO, **new_arguments),
        "no-repo": render_dataset_card(frame, repo_id=None, **new_arguments),
        "empty": render_dataset_card(empty_dataset(), repo_id=REPO, **new_arguments),
        "refresh-status": render_dataset_card(
            small, repo_id=REPO, refresh_status="A checkpoint of a refresh in progress.", chart_files=("a.png",), **new_arguments
        ),
        "no-charts": render_dataset_card(small, repo_id=None, chart_files=(), **new_arguments),
    }


def test_card_called_the_old_way_is_byte_identical_to_before(frame):
    cards = old_way_cards(frame)
    assert {name: hashlib.sha256(text.encode()).hexdigest() for name, text in cards.items()} == OLD_CARD_SHA256
    # Passing the new arguments' defaults is the same call.
    assert old_way_cards(frame, counts_source="pypistats", history=None, cross_check=None) == cards


# --- counts source, history, cross-check ---------------------------------------------------------

HISTORY = HistoryInfo(first_day=dt.date(2026, 8, 27), last_day=dt.date(2026, 11, 24), days=88, complete=True)
PARTIAL = dataclasses.replace(HISTORY, complete=False)
CROSS_CHECK = "48 of 50 sampled projects agree exactly with pypistats.org; median relative difference of last_month 0.0%."
PARTIAL_SENTENCE = "**The history is partial.** With the pypistats source"


@pytest.fixture(scope="module")
def clickhouse_card(frame):
    return render_dataset_card(
        frame,
        repo_id=REPO,
        chart_files=(*CHART_FILES, TREND_CHART),
        refresh_status="Complete: every project counted.",
        counts_source="clickhouse",
        history=HISTORY,
        cross_check=CROSS_CHECK,
    )


def test_history_adds_a_second_config_after_the_default(frame, clickhouse_card):
    default = {"config_name": "default", "data_files": "dataset.parquet"}
    assert DatasetCard(clickhouse_card).data.configs == [default, {"config_name": "history", "data_files": "history/*.parquet"}]
    partial = render_dataset_card(frame, repo_id=REPO, history=PARTIAL)
    assert DatasetCard(partial).data.configs == [default, {"config_name": "history", "data_files": "history/*.parquet"}]
    for card in (render_dataset_card(frame, repo_id=REPO), render_dataset_card(frame, repo_id=REPO, counts_source="clickhouse")):
        assert DatasetCard(card).data.configs == [default]
        assert "## Download history" not in card and "history/" not in card


def test_history_section(clickhouse_card):
    text = section(clickhouse_card, "Download history")
    assert [row[0].strip("`") for row in table(text)] == ["date", "name", "downloads"]
    assert "history/YYYY-MM-DD.parquet" in text and "PEP 503" in text
    # 2026-08-27 .. 2026-11-24 is 90 days, 88 of them have a file.
    assert "**Range:** 2026-08-27 to 2026-11-24 (UTC), 88 daily files; 2 days in that range have no file." in text
    assert f'load_dataset("{REPO}", "history", split="train")' in text
    assert f'pd.read_parquet("hf://datasets/{REPO}/history/2026-11-24.parquet")' in text
    assert 'allow_patterns="history/*.parquet"' in text and "pq.read_table(" in text
    assert "**The history is complete:**" in text and PARTIAL_SENTENCE not in clickhouse_card
    # The section comes after the charts and before the sample.
    headings = re.findall(r"^## (.*)$", clickhouse_card, flags=re.MULTILINE)
    assert headings.index("Charts") + 1 == headings.index("Download history") == headings.index("Sample") - 1
    assert "the `history` config" in section(clickhouse_card, "Schema")


def test_partial_history_says_so_only_when_not_complete(frame):
    partial = render_dataset_card(frame, repo_id=None, history=PARTIAL)
    text = section(partial, "Download history")
    assert PARTIAL_SENTENCE in text and "only the projects fetched" in text and "`last_day`" in text
    assert "The history is complete" not in text
    assert PARTIAL_SENTENCE not in render_dataset_card(frame, repo_id=None, history=HISTORY)
    # Without a repo: local paths only.
    assert 'pd.read_parquet("history/2026-11-24.parquet")' in text and "hf://" not in partial
    one_day = render_dataset_card(frame, repo_id=None, history=HistoryInfo(dt.date(2026, 11, 24), dt.date(2026, 11, 24), 1, False))
    assert "**Range:** 2026-11-24 (UTC), 1 daily file." in one_day


def test_trend_chart_is_embedded_with_a_caption(clickhouse_card):
    text = section(clickhouse_card, "Charts")
    assert re.search(r"!\[Download trend\]\(download_trend\.png\)\n\n\*[^*]+legend is ordered by downloads", text)
    assert [m for m in re.findall(r"\]\(([^)]+\.png)\)", text)] == [*CHART_FILES, TREND_CHART]


def test_clickhouse_source_is_described(clickhouse_card):
    data = DatasetCard(clickhouse_card).data
    assert "clickhouse" in data.tags and {"pypi", "downloads", "pypistats"} <= set(data.tags)
    text = section(clickhouse_card, "Source and terms")
    for phrase in (
        "ClickPy", "https://sql-clickhouse.clickhouse.com", "bigquery-public-data.pypi", "excluding mirrors",
        "bandersnatch, z3c.pypimirror, Artifactory and devpi", "last complete UTC day", "D-6 to D", "D-29 to D",
        "https://github.com/ClickHouse/clickpy", "cross-check", "Every project is refreshed each day", "`empty`",
    ):
        assert phrase in text, phrase
    assert "its `recent` API" not in text  # the pypistats wording
    description = clickhouse_card.split("## Overview")[0]
    assert "ClickPy" in description and "/api/packages/<name>/recent" not in description
    assert "rolling basis" not in section(clickhouse_card, "Limitations")
    assert "All rows are refreshed together" in section(clickhouse_card, "Limitations")
    # Nothing says the counts came from pypistats.
    for pypistats_wording in ("pypistats returned counts", "pypistats has no data", "No data on pypistats", "Download counts from pypistats.org"):
        assert pypistats_wording not in clickhouse_card, pypistats_wording
    [status] = [row for row in table(section(clickhouse_card, "Schema")) if row[0] == "`status`"]
    assert "no downloads in the last 30 days" in status[2] and "404" in status[2]
    overview = {row[0]: row[1] for row in table(section(clickhouse_card, "Overview"))}
    assert "No downloads in the last 30 days (`status` = `empty`)" in overview
    _, fields = bibtex(clickhouse_card)
    assert "ClickPy" in fields["note"]


def test_pypistats_source_keeps_its_wording_and_tags(card):
    assert "clickhouse" not in DatasetCard(card).data.tags
    assert "ClickPy" not in card and "clickhouse" not in card.lower()


def test_unknown_counts_source_is_refused(frame):
    with pytest.raises(ValueError, match="counts_source"):
        render_dataset_card(frame, repo_id=REPO, counts_source="bigquery")


def test_cross_check_sentence_under_the_overview(frame, clickhouse_card):
    overview = section(clickhouse_card, "Overview")
    assert f"**Refresh:** Complete: every project counted.\n\n**Cross-check:** {CROSS_CHECK}" in overview
    assert clickhouse_card.count(CROSS_CHECK) == 1
    assert "Cross-check:**" not in render_dataset_card(frame, repo_id=REPO, counts_source="clickhouse")
    alone = render_dataset_card(frame, repo_id=REPO, cross_check=CROSS_CHECK)
    assert f"**Cross-check:** {CROSS_CHECK}" in section(alone, "Overview") and "**Refresh:**" not in alone


def test_new_card_is_deterministic_and_parses(frame, clickhouse_card):
    assert render_dataset_card(
        frame.copy(),
        repo_id=REPO,
        chart_files=(*CHART_FILES, TREND_CHART),
        refresh_status="Complete: every project counted.",
        counts_source="clickhouse",
        history=dataclasses.replace(HISTORY),
        cross_check=CROSS_CHECK,
    ) == clickhouse_card
    body = card_without_front_matter(clickhouse_card)
    assert body.startswith("# PyPI Download Counts\n") and "configs:" not in body
    assert body == DatasetCard(clickhouse_card).text.lstrip("\n")
    # Tables still have as many cells per row as their header.
    for block in re.split(r"\n\n", clickhouse_card):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if lines:
            assert len({len(UNESCAPED_PIPE.findall(line)) for line in lines}) == 1, block


def test_history_config_loads_with_datasets(tmp_path, frame):
    """The card's configs, read by 🤗 Datasets from a folder laid out like the repo."""
    days = [dt.date(2026, 11, 23), dt.date(2026, 11, 24)]
    history = pd.DataFrame({"date": [days[0], days[0], days[1]], "name": ["a", "b", "a"], "downloads": [3, 4, 5]})
    schema = pa.schema([("date", pa.date32(), False), ("name", pa.string(), False), ("downloads", pa.int64(), False)])
    (tmp_path / "history").mkdir()
    for day in days:
        rows = history[history["date"] == day]
        pq.write_table(pa.Table.from_pandas(rows, schema=schema, preserve_index=False), tmp_path / "history" / f"{day}.parquet")
    small = make_frame(20)
    (tmp_path / "dataset.parquet").write_bytes(dataset_to_parquet(small))
    info = HistoryInfo(first_day=days[0], last_day=days[1], days=2, complete=True)
    (tmp_path / "README.md").write_text(render_dataset_card(small, repo_id=None, counts_source="clickhouse", history=info))
    cache = str(tmp_path / "cache")
    loaded = datasets.load_dataset(str(tmp_path), "history", split="train", cache_dir=cache)
    assert loaded.num_rows == 3 and set(loaded.column_names) == {"date", "name", "downloads"}
    assert sorted(zip(loaded["name"], loaded["downloads"])) == [("a", 3), ("a", 5), ("b", 4)]
    assert datasets.load_dataset(str(tmp_path), split="train", cache_dir=cache).num_rows == len(small)
    # What the section says pandas and pyarrow give for the folder.
    read = pd.read_parquet(tmp_path / "history")
    assert len(read) == 3 and isinstance(read["date"].iloc[0], dt.date) and str(read["downloads"].dtype) == "int64"
    assert pq.read_table(tmp_path / "history").num_rows == 3
