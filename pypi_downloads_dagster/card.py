"""The dataset card (README.md on the Hub): YAML metadata for the Hub and a summary of the data.

Everything in the card is computed from the frame alone (the "last updated" date is the newest
`updated_at`, not the wall clock), so the same dataset always gives the same text and an unchanged
dataset does not produce a new commit.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
from huggingface_hub import DatasetCard, DatasetCardData

from .charts import CHART_FILES, PERIOD_LABELS, TOP_N, period_stats, top_packages
from .schema import COLUMN_DOCS, COLUMNS, COUNT_COLUMNS, DATASET_FILE, STATUS_EMPTY, STATUS_VALID

PRETTY_NAME = "PyPI Download Counts"
TAGS = ["pypi", "python", "packages", "downloads", "pypistats", "statistics"]
SAMPLE_ROWS = 20
SAMPLE_SEED = 0
STALE_DAYS = 30

#: The Hub's `size_categories` buckets: (exclusive upper bound, label); larger is "n>1T".
SIZE_CATEGORIES = (
    (10**3, "n<1K"),
    (10**4, "1K<n<10K"),
    (10**5, "10K<n<100K"),
    (10**6, "100K<n<1M"),
    (10**7, "1M<n<10M"),
    (10**8, "10M<n<100M"),
    (10**9, "100M<n<1B"),
    (10**10, "1B<n<10B"),
    (10**11, "10B<n<100B"),
    (10**12, "100B<n<1T"),
)


CHART_CAPTIONS = {
    "download_distribution.png": (
        "Download distribution",
        "Top: histograms of log10(downloads) over packages with at least one download, with the "
        "P50/P90/P95/P99 lines. Bottom: the share of all downloads held by the top k packages "
        "(k on a log axis), with total, mean, median and maximum.",
    ),
    "top_packages.png": (
        "Top packages",
        f"Downloads in the last day, week and month of the top {TOP_N} packages by monthly downloads (log scale).",
    ),
}


def size_category(rows: int) -> str:
    """The Hub's `size_categories` label for a dataset of `rows` rows (1,000 rows is `1K<n<10K`)."""
    for bound, label in SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1T"


def dataset_overview(frame: pd.DataFrame) -> dict[str, float | int | None]:
    """Row counts for the card: `total`, `with_data` (fetched at least once), `valid` (has counts),
    `empty`, `stale` (never fetched, or fetched more than `STALE_DAYS` before the newest fetch) and
    `last_updated` (the newest `updated_at`, None when nothing was fetched)."""
    updated = frame["updated_at"].to_numpy(dtype="float64", na_value=np.nan)
    fetched = ~np.isnan(updated)
    newest = float(updated[fetched].max()) if fetched.any() else None
    status = frame["status"]
    # Staleness relative to the newest fetch, not to now, so the card does not change by itself.
    fresh = fetched & (updated >= (newest or 0) - STALE_DAYS * 86400)
    return {
        "total": len(frame),
        "with_data": int(fetched.sum()),
        "valid": int((status == STATUS_VALID).sum()),
        "empty": int((status == STATUS_EMPTY).sum()),
        "stale": int(len(frame) - fresh.sum()),
        "last_updated": newest,
    }


def sample_rows(frame: pd.DataFrame, n: int = SAMPLE_ROWS, seed: int = SAMPLE_SEED) -> pd.DataFrame:
    """A seeded random sample of `n` fetched rows (any rows if none was fetched yet), in dataset order."""
    fetched = frame[frame["updated_at"].notna()]
    pool = fetched if len(fetched) else frame
    return pool.sample(n=min(n, len(pool)), random_state=seed).sort_index()


def markdown_cell(value) -> str:
    """A value as Markdown table cell text: escaped `|` and backslashes, no line breaks, `—` for null."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())


def format_number(value: float) -> str:
    """Thousands separators; one decimal for values that are not whole (averages); `—` for NaN/null."""
    if value is None or value is pd.NA or not np.isfinite(value):
        return "—"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def render_dataset_card(
    frame: pd.DataFrame, *, repo_id: str | None, chart_files=CHART_FILES, refresh_status: str | None = None
) -> str:
    """The dataset's README.md: Hub metadata (license, size category, a `configs` entry pointing the
    viewer at `dataset.parquet`) and a Markdown summary of `frame`. Deterministic; works for no rows.

    `chart_files` are the chart paths relative to the README, embedded in that order.
    `refresh_status` is one sentence on the refresh this version comes from (complete, or a
    checkpoint of one in progress), shown under the overview.
    """
    overview = dataset_overview(frame)
    data = DatasetCardData(
        license="apache-2.0",
        language=["en"],
        tags=TAGS,
        size_categories=[size_category(overview["total"])],
        source_datasets=["pypistats"],
        pretty_name=PRETTY_NAME,
        configs=[{"config_name": "default", "data_files": DATASET_FILE}],
    )
    sections = [
        _description(),
        _overview(overview) + (f"\n\n**Refresh:** {refresh_status}" if refresh_status else ""),
        _schema_table(),
        _charts(chart_files),
        _sample(frame),
        _top(frame),
        _statistics(frame),
        _usage(repo_id),
    ]
    body = "\n\n".join(section.strip() for section in sections if section) + "\n"
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _description() -> str:
    return f"""
# {PRETTY_NAME}

Recent download counts for every project in the [PyPI](https://pypi.org) simple index, one row per
project, taken from the [pypistats.org](https://pypistats.org) API (`/api/packages/<name>/recent`):
downloads in the last day, week and month, **excluding mirrors**.

The dataset is refreshed daily. pypistats limits how fast it may be asked, so each run refreshes the
rows that are *stale* (never fetched, or fetched more than {STALE_DAYS} days ago) and keeps the others;
every row's `updated_at` says when its counts were taken. `status` tells the three cases apart:
`valid` (pypistats returned counts), `empty` (pypistats has no data for the project, counts are null)
and null (not fetched yet, counts are null). A fetch that fails leaves the row as it was. Projects
that leave the index leave the dataset.
"""


def _overview(o: dict) -> str:
    def share(count: int) -> str:
        return f"{count / o['total']:.1%}" if o["total"] else "—"

    last = "never" if o["last_updated"] is None else dt.datetime.fromtimestamp(o["last_updated"], dt.UTC).strftime("%Y-%m-%d")
    rows = [
        ("Packages", f"{o['total']:,}", ""),
        ("With data (fetched at least once, `updated_at` set)", f"{o['with_data']:,}", share(o["with_data"])),
        ("Non-empty (`status` = `valid`)", f"{o['valid']:,}", share(o["valid"])),
        ("No data on pypistats (`status` = `empty`)", f"{o['empty']:,}", share(o["empty"])),
        (f"Stale (never fetched, or fetched {STALE_DAYS}+ days before the last update)", f"{o['stale']:,}", share(o["stale"])),
        ("Last updated (newest `updated_at`, UTC)", last, ""),
    ]
    return "## Overview\n\n" + _table(["", "count", "share"], rows, align="lrr")


def _schema_table() -> str:
    rows = [(f"`{column}`", *COLUMN_DOCS[column]) for column in COLUMNS]
    return f"## Schema\n\nOne file, `{DATASET_FILE}`, sorted by `name`.\n\n" + _table(["column", "type", "description"], rows)


def _charts(chart_files) -> str:
    if not chart_files:
        return ""
    parts = ["## Charts"]
    for path in chart_files:
        title, caption = CHART_CAPTIONS.get(path.rsplit("/", 1)[-1], (path, ""))
        parts.append(f"![{title}]({path})\n\n*{caption}*" if caption else f"![{title}]({path})")
    return "\n\n".join(parts)


def _sample(frame: pd.DataFrame) -> str:
    heading = f"## Sample\n\nUp to {SAMPLE_ROWS} fetched rows picked at random (seeded), `updated_at` shown as UTC time.\n\n"
    sample = sample_rows(frame)
    if sample.empty:
        return heading + "_No rows yet._"
    rows = [
        (
            markdown_cell(row.name),
            markdown_cell(row.url),
            *(format_number(getattr(row, c)) for c in COUNT_COLUMNS),
            markdown_cell(row.status),
            _utc(row.updated_at),
        )
        for row in sample.itertuples(index=False)
    ]
    return heading + _table(list(COLUMNS), rows, align="llrrrll")


def _top(frame: pd.DataFrame) -> str:
    top = top_packages(frame)
    heading = f"## Top {TOP_N} packages by monthly downloads\n\n"
    if top.empty:
        return heading + "_No download counts yet._"
    rows = [
        (str(rank), markdown_cell(row.name), *(format_number(getattr(row, c)) for c in COUNT_COLUMNS))
        for rank, row in enumerate(top.itertuples(index=False), start=1)
    ]
    return heading + _table(["#", "name", *COUNT_COLUMNS], rows, align="rlrrr")


def _statistics(frame: pd.DataFrame) -> str:
    stats = period_stats(frame)
    rows = [
        (PERIOD_LABELS[c], f"{s['packages']:,}", format_number(s["total"]), format_number(s["mean"]),
         format_number(s["median"]), format_number(s["max"]))
        for c, s in stats.items()
    ]
    return ("## Download statistics\n\nOver the packages with counts (`status` = `valid`).\n\n"
            + _table(["period", "packages", "total", "average", "median", "max"], rows, align="lrrrrr"))


def _usage(repo_id: str | None) -> str:
    path = f"hf://datasets/{repo_id}/{DATASET_FILE}" if repo_id else DATASET_FILE
    code = f'import pandas as pd\n\ndf = pd.read_parquet("{path}")'
    if repo_id:
        code += f'\n\n# or with 🤗 Datasets\nfrom datasets import load_dataset\n\nds = load_dataset("{repo_id}", split="train")'
    return f"## Usage\n\n```python\n{code}\n```"


def markdown_table(frame: pd.DataFrame) -> str:
    """Any frame as a Markdown table (for previews in the Dagster UI)."""
    rows = [[markdown_cell(value) for value in row] for row in frame.itertuples(index=False)]
    return _table([str(c) for c in frame.columns], rows)


def _table(header: list[str], rows, align: str | None = None) -> str:
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _utc(seconds: float) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "—"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
