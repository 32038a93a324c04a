"""The dataset card (README.md on the Hub): YAML metadata for the Hub and a summary of the data.

Everything in the card is computed from its arguments alone (the "last updated" date is the newest
`updated_at`, not the wall clock), so the same dataset always gives the same text and an unchanged
dataset does not produce a new commit. The text describes the counts source it is given
(`pypistats`, the default, or `clickhouse`) and, when there is one, the daily download history.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re

import numpy as np
import pandas as pd
from huggingface_hub import DatasetCard, DatasetCardData

from pypi_downloads_dagster.publishing.charts import CHART_FILES, PERIOD_LABELS, TOP_N, TREND_CHART, period_stats, snapshot_date, top_packages
from pypi_downloads_dagster.dataset.schema import COLUMN_DOCS, COLUMNS, COUNT_COLUMNS, DATASET_FILE, STATUS_EMPTY, STATUS_VALID

PRETTY_NAME = "PyPI Download Counts"
TAGS = ["pypi", "python", "packages", "downloads", "pypistats", "statistics"]
#: The counts sources the card can describe (COUNTS_SOURCE's values); the first is the default.
SOURCE_PYPISTATS = "pypistats"
SOURCE_CLICKHOUSE = "clickhouse"
COUNTS_SOURCES = (SOURCE_PYPISTATS, SOURCE_CLICKHOUSE)
#: The Hub config of the daily history files, after the `default` one (the dataset).
HISTORY_CONFIG = {"config_name": "history", "data_files": "history/*.parquet"}
SAMPLE_ROWS = 20
SAMPLE_SEED = 0
STALE_DAYS = 30
HUB_DATASETS_URL = "https://huggingface.co/datasets/"

#: How each reader types the count columns of `dataset.parquet` and shows a null count:
#: (reader, call, count type, null). test_readers.py reads the file with each and checks these claims.
READER_TYPES = (
    ("pandas", "`pd.read_parquet(path)`", "Int64", "<NA>"),
    ("pyarrow", "`pq.read_table(path)`", "int64", "null"),
    ("datasets", '`load_dataset("parquet", data_files=path)`', "int64", "None"),
)

_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n(?:.*?\r?\n)?---[ \t]*(?:\r?\n|\Z)", re.DOTALL)

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
    TREND_CHART: (
        "Download trend",
        "Downloads per day of the most downloaded projects over the days named in the title, one line per "
        "project, mirrors excluded (log scale); the legend is ordered by downloads over those days.",
    ),
}


@dataclasses.dataclass(frozen=True)
class HistoryInfo:
    """What the card says about the daily history files (`history/YYYY-MM-DD.parquet`) in the repo."""

    first_day: dt.date
    last_day: dt.date
    days: int  # number of history files
    complete: bool  # every project with downloads each day (the clickhouse source), not a partial history


#: The overview's label of `empty` rows, per counts source.
_EMPTY_LABELS = {
    SOURCE_PYPISTATS: "No data on pypistats (`status` = `empty`)",
    SOURCE_CLICKHOUSE: f"No downloads in the last {STALE_DAYS} days (`status` = `empty`)",
}
#: Column docs that differ from the schema's (written for pypistats) with another counts source.
_SOURCE_COLUMN_DOCS = {
    SOURCE_CLICKHOUSE: {
        "status": (
            "string, nullable",
            f"`valid`: the project has downloads in the last {STALE_DAYS} days (counts set); `empty`: no downloads in the last "
            f"{STALE_DAYS} days (what pypistats answers with a 404), counts null; null: never fetched.",
        ),
    },
}
#: (named in the citation's note, credited in its sentence) per counts source.
_CITATION_SOURCES = {
    SOURCE_PYPISTATS: ("pypistats.org", "pypistats.org"),
    SOURCE_CLICKHOUSE: ("ClickPy (ClickHouse) with pypistats.org's definition", "ClickPy (ClickHouse Inc.)"),
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
    frame: pd.DataFrame,
    *,
    repo_id: str | None,
    chart_files=CHART_FILES,
    refresh_status: str | None = None,
    counts_source: str = SOURCE_PYPISTATS,
    history: HistoryInfo | None = None,
    cross_check: str | None = None,
) -> str:
    """The dataset's README.md: Hub metadata (license, size category, a `configs` entry pointing the
    viewer at `dataset.parquet`) and a Markdown summary of `frame`. Deterministic; works for no rows.

    `chart_files` are the chart paths relative to the README, embedded in that order.
    `refresh_status` is one sentence on the refresh this version comes from (complete, or a
    checkpoint of one in progress), shown under the overview.
    `counts_source` (one of `COUNTS_SOURCES`) is where the counts come from; the description, the
    `status` docs, "Source and terms", the limitations, the citation and the tags say so.
    `history`, when the repo has daily history files, adds a second config (`history`) and a
    "Download history" section. `cross_check` is one sentence on how a sample of the counts agrees
    with pypistats.org, shown under the overview.
    """
    if counts_source not in COUNTS_SOURCES:
        raise ValueError(f"counts_source must be one of {', '.join(COUNTS_SOURCES)}, got {counts_source!r}")
    clickhouse = counts_source == SOURCE_CLICKHOUSE
    overview = dataset_overview(frame)
    configs = [{"config_name": "default", "data_files": DATASET_FILE}]
    if history is not None:
        configs.append(dict(HISTORY_CONFIG))
    data = DatasetCardData(
        license="apache-2.0",
        language=["en"],
        tags=[*TAGS, SOURCE_CLICKHOUSE] if clickhouse else TAGS,
        size_categories=[size_category(overview["total"])],
        # No `source_datasets`: it takes Hub dataset ids, and pypistats is a web API (named in the text).
        pretty_name=PRETTY_NAME,
        configs=configs,
    )
    notes = (f"\n\n**Refresh:** {refresh_status}" if refresh_status else "") + (f"\n\n**Cross-check:** {cross_check}" if cross_check else "")
    sections = [
        _clickhouse_description() if clickhouse else _description(),
        _overview(overview, counts_source) + notes,
        _schema_table(counts_source, history is not None),
        _charts(chart_files),
        _history(history, repo_id) if history is not None else "",
        _sample(frame),
        _top(frame),
        _statistics(frame),
        _usage(repo_id),
        _clickhouse_source_and_terms() if clickhouse else _source_and_terms(),
        _clickhouse_limitations() if clickhouse else _limitations(),
        _citation(repo_id, snapshot_date(frame), counts_source),
    ]
    body = "\n\n".join(section.strip() for section in sections if section) + "\n"
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def card_without_front_matter(card: str) -> str:
    """The Markdown body of `card` without its YAML front matter (the Dagster UI shows that header
    as a garbled list); a card without front matter comes back unchanged."""
    match = _FRONT_MATTER.match(card)
    return card[match.end():].lstrip("\r\n") if match else card


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


def _clickhouse_description() -> str:
    return f"""
# {PRETTY_NAME}

Recent download counts for every project in the [PyPI](https://pypi.org) simple index, one row per
project: downloads in the last day, week and month, **excluding mirrors**, counted from
[ClickPy](https://clickpy.clickhouse.com)'s public ClickHouse database of PyPI's download logs the
way [pypistats.org](https://pypistats.org) counts its `recent` downloads (see "Source and terms").

The dataset is refreshed daily, every project at once: one refresh counts the whole index, so after
it every row has the same `updated_at` and its counts cover the same {STALE_DAYS} days. `status` tells
the three cases apart: `valid` (the project has downloads in the last {STALE_DAYS} days), `empty` (no
downloads in the last {STALE_DAYS} days, counts are null; pypistats answers 404 for such a project)
and null (not fetched yet, counts are null). A refresh that fails leaves the rows as they were.
Projects that leave the index leave the dataset.
"""


def _overview(o: dict, counts_source: str = SOURCE_PYPISTATS) -> str:
    def share(count: int) -> str:
        return f"{count / o['total']:.1%}" if o["total"] else "—"

    last = "never" if o["last_updated"] is None else dt.datetime.fromtimestamp(o["last_updated"], dt.UTC).strftime("%Y-%m-%d")
    rows = [
        ("Packages", f"{o['total']:,}", ""),
        ("With data (fetched at least once, `updated_at` set)", f"{o['with_data']:,}", share(o["with_data"])),
        ("Non-empty (`status` = `valid`)", f"{o['valid']:,}", share(o["valid"])),
        (_EMPTY_LABELS[counts_source], f"{o['empty']:,}", share(o["empty"])),
        (f"Stale (never fetched, or fetched {STALE_DAYS}+ days before the last update)", f"{o['stale']:,}", share(o["stale"])),
        ("Last updated (newest `updated_at`, UTC)", last, ""),
    ]
    return "## Overview\n\n" + _table(["", "count", "share"], rows, align="lrr")


def _schema_table(counts_source: str = SOURCE_PYPISTATS, with_history: bool = False) -> str:
    docs = {**COLUMN_DOCS, **_SOURCE_COLUMN_DOCS.get(counts_source, {})}
    rows = [(f"`{column}`", *docs[column]) for column in COLUMNS]
    readers = [(name, call, f"`{count_type}`", f"`{null}`") for name, call, count_type, null in READER_TYPES]
    files = f"One file, `{DATASET_FILE}`, sorted by `name`."
    if with_history:
        files = f"One file, `{DATASET_FILE}`, sorted by `name`: the `default` config (the daily history is the `history` config, below)."
    return (
        f"## Schema\n\n{files}\n\n"
        + _table(["column", "type", "description"], rows)
        + "\n\nThe counts are stored as nullable 64-bit integers, and the file carries pandas metadata, "
        "so each reader gets integers with a real null (no float64 with NaN):\n\n"
        + _table(["reader", "call", "count columns", "null count"], readers)
        + "\n\n🤗 Datasets' `Dataset.to_pandas()` still turns integer columns with nulls into float64 with NaN; "
        "read the file with `pd.read_parquet` for `Int64` counts. `updated_at` is float64 Unix seconds (UTC) "
        'in every reader; `pd.to_datetime(df["updated_at"], unit="s", utc=True)` gives timestamps.'
    )


def _charts(chart_files) -> str:
    if not chart_files:
        return ""
    parts = ["## Charts"]
    for path in chart_files:
        title, caption = CHART_CAPTIONS.get(path.rsplit("/", 1)[-1], (path, ""))
        parts.append(f"![{title}]({path})\n\n*{caption}*" if caption else f"![{title}]({path})")
    return "\n\n".join(parts)


def _history(history: HistoryInfo, repo_id: str | None) -> str:
    span = (history.last_day - history.first_day).days + 1
    missing = span - history.days
    days = f"{history.days:,} daily file" + ("" if history.days == 1 else "s")
    if missing > 0:
        days += f"; {missing:,} day{'' if missing == 1 else 's'} in that range {'has' if missing == 1 else 'have'} no file"
    rows = [
        ("`date`", "date32", "The UTC day of the downloads (the day in the file name)."),
        ("`name`", "string", "The project's PEP 503 normalized name (lower case, each run of `-`, `_`, `.` as one `-`: "
                             "`zope.interface` is `zope-interface`), the last part of `url` in the dataset."),
        ("`downloads`", "int64", "Downloads of the project on that day, mirrors excluded; always at least 1."),
    ]
    coverage = (
        "**The history is complete:** a day's file has one row for every project with downloads that day (no row: "
        "no downloads), counted from ClickPy like the dataset's counts."
        if history.complete
        else "**The history is partial.** With the pypistats source, a day's file holds only the projects fetched "
        "while pypistats' counts were those of that day, with their `last_day`; a project without a row may well "
        "have had downloads that day, so a day's rows do not add up to PyPI's downloads of that day."
    )
    last = f"{history.last_day:%Y-%m-%d}"
    span_text = last if history.first_day == history.last_day else f"{history.first_day:%Y-%m-%d} to {last}"
    if repo_id:
        code = (
            f'from datasets import load_dataset\n\nhistory = load_dataset("{repo_id}", "history", split="train")\n\n'
            f"# or one day with pandas\nimport pandas as pd\n\n"
            f'day = pd.read_parquet("hf://datasets/{repo_id}/history/{last}.parquet")\n\n'
            "# or every day with pandas or pyarrow, from a local copy of the folder\n"
            "import pyarrow.parquet as pq\nfrom huggingface_hub import snapshot_download\n\n"
            f'folder = snapshot_download("{repo_id}", repo_type="dataset", allow_patterns="{HISTORY_CONFIG["data_files"]}")\n'
            'history = pd.read_parquet(f"{folder}/history")  # or pq.read_table(f"{folder}/history")'
        )
    else:
        code = (
            "import pandas as pd\nimport pyarrow.parquet as pq\n\n"
            f'day = pd.read_parquet("history/{last}.parquet")\n'
            'history = pd.read_parquet("history")  # every day; or pq.read_table("history")'
        )
    return (
        "## Download history\n\n"
        "Downloads per project per day, mirrors excluded, one Parquet file per UTC day: `history/YYYY-MM-DD.parquet` "
        "(the `history` config), rows sorted by `name`.\n\n"
        + _table(["column", "type", "description"], rows)
        + f"\n\n**Range:** {span_text} (UTC), {days}.\n\n"
        + coverage
        + "\n\npandas reads `date` as `datetime.date` values; `pd.to_datetime(history[\"date\"])` gives timestamps.\n\n"
        + f"```python\n{code}\n```"
    )


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
            utc_time(row.updated_at),
        )
        for row in sample.itertuples(index=False)
    ]
    return heading + _table([*COLUMNS[:-1], "updated_at (UTC)"], rows, align="llrrrll")


def _top(frame: pd.DataFrame) -> str:
    top = top_packages(frame)
    heading = f"## Top {TOP_N} packages by monthly downloads\n\n"
    if top.empty:
        return heading + "_No download counts yet._"
    rows = [
        (str(rank), markdown_cell(row.name), *(format_number(getattr(row, c)) for c in COUNT_COLUMNS), utc_time(row.updated_at))
        for rank, row in enumerate(top.itertuples(index=False), start=1)
    ]
    return heading + _table(["#", "name", *COUNT_COLUMNS, "updated_at (UTC)"], rows, align="rlrrrl")


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


def _source_and_terms() -> str:
    return """
## Source and terms

- The counts come from [pypistats.org](https://pypistats.org) (its `recent` API). pypistats computes
  them from PyPI's public download logs in Google BigQuery, the dataset `bigquery-public-data.pypi`,
  **excluding mirrors** (downloads by mirroring tools such as bandersnatch and devpi are not counted).
- PyPI's download data itself is public: anyone can query `bigquery-public-data.pypi`
  ([how](https://packaging.python.org/en/latest/guides/analyzing-pypi-package-downloads/)).
- pypistats is a free service and asks API clients to be gentle: not to hammer it or crawl every
  package at full speed ([etiquette](https://pypistats.org/api/)). The refresh behind this dataset
  paces its requests below pypistats' rate limits and names itself in its User-Agent. For your own
  analyses, use this file or BigQuery rather than querying pypistats package by package.
- Project names and URLs come from the [PyPI simple index](https://pypi.org/simple/).
- This dataset is not affiliated with or endorsed by PyPI, the Python Software Foundation or pypistats.org.
"""


def _clickhouse_source_and_terms() -> str:
    return """
## Source and terms

- The counts come from [ClickPy](https://clickpy.clickhouse.com)'s public ClickHouse database, served
  read-only by ClickHouse Inc. at `https://sql-clickhouse.clickhouse.com`. ClickPy holds PyPI's
  download logs as PyPI publishes them in Google BigQuery, the public dataset
  `bigquery-public-data.pypi`, aggregated per project, version, day, installer and file type.
- They are counted with pypistats.org's definition of its `recent` counts, **excluding mirrors**
  (downloads by the installers bandersnatch, z3c.pypimirror, Artifactory and devpi are not counted).
  D is the last complete UTC day: `last_day` is the downloads on D, `last_week` on D-6 to D and
  `last_month` on D-29 to D; a project without downloads in those 30 days is `empty`.
- Every project is refreshed each day, by one bulk read of the whole index (not package by package).
- [pypistats.org](https://pypistats.org) is asked only for a small random sample of projects, spread
  across popularity, on each refresh, to cross-check these counts; the refresh paces those requests
  below pypistats' rate limits, to be gentle with a free service ([etiquette](https://pypistats.org/api/)).
- Terms: ClickPy's public instance and the conditions of its use are described in ClickPy's
  repository README ([ClickHouse/clickpy](https://github.com/ClickHouse/clickpy)). PyPI's download
  data itself is public: anyone can query `bigquery-public-data.pypi`
  ([how](https://packaging.python.org/en/latest/guides/analyzing-pypi-package-downloads/)).
- Project names and URLs come from the [PyPI simple index](https://pypi.org/simple/).
- This dataset is not affiliated with or endorsed by PyPI, the Python Software Foundation,
  pypistats.org or ClickHouse Inc.
"""


def _clickhouse_limitations() -> str:
    return f"""
## Limitations

- **All rows are refreshed together.** Each daily refresh counts every project on the index, so after
  it the rows share one `updated_at` and one {STALE_DAYS}-day window. A refresh that fails leaves the
  rows with the counts of the last one that succeeded.
- **Mirrors are excluded.** Downloads by mirroring tools are not in the counts; nor are installs
  from caches, private indexes or other mirrors that never reach PyPI. A download is not a user.
- **`empty` means no data in the last 30 days:** ClickPy has no downloads of the project in the last
  {STALE_DAYS} days (the case where pypistats answers 404). It does not mean the project was never downloaded.
- **The counts lag by a day.** PyPI's download logs reach ClickPy during the next day; a refresh counts
  up to the last complete UTC day before it, and only once ClickPy has loaded that day, so `last_day`
  is the day before `updated_at`, not the day of `updated_at`.
- **ClickPy is not pypistats.org.** Both count the same public logs with the same definition, but
  each loads them on its own; counts can differ a little, which the cross-check with pypistats.org
  measures.
- Null counts with a null `status` are rows not fetched yet, not zero downloads.
"""


def _limitations() -> str:
    return f"""
## Limitations

- **Rows are refreshed on a rolling basis.** pypistats' rate limits let a refresh fetch only part of
  PyPI's projects per day, so it works through the stale rows over days and keeps the others as they
  are: rows have different `updated_at`, and two rows' counts can cover different 30-day windows.
  Compare rows with their `updated_at` in mind.
- **Mirrors are excluded.** Downloads by mirroring tools are not in the counts; nor are installs
  from caches, private indexes or other mirrors that never reach PyPI. A download is not a user.
- **`empty` means no data in the last 30 days:** pypistats has no downloads for the project in its
  last {STALE_DAYS} days (it returns 404). It does not mean the project was never downloaded.
- **The counts lag by a day.** pypistats updates once a day (after 01:00 UTC) with the day before, so
  `last_day` is the last full day before the fetch, not the day of `updated_at`.
- Null counts with a null `status` are rows not fetched yet, not zero downloads.
"""


def _citation(repo_id: str | None, snapshot: str | None, counts_source: str = SOURCE_PYPISTATS) -> str:
    key = re.sub(r"[^A-Za-z0-9]+", "_", repo_id).strip("_").lower() if repo_id else "pypi_download_counts"
    source, credit = _CITATION_SOURCES[counts_source]
    fields = [("title", f"{{{PRETTY_NAME}}}")]
    if repo_id:
        fields += [("author", f"{{{repo_id.split('/')[0]}}}"), ("howpublished", f"{{\\url{{{HUB_DATASETS_URL}{repo_id}}}}}")]
    if snapshot:
        # The snapshot's year, not today's: the card must not change by itself.
        fields += [("year", f"{{{snapshot[:4]}}}"), ("note", f"{{Download counts from {source}, snapshot {snapshot}}}")]
    else:
        fields.append(("note", f"{{Download counts from {source}}}"))
    width = max(len(name) for name, _ in fields)
    entry = ",\n".join(f"  {name.ljust(width)} = {value}" for name, value in fields)
    return (
        f"## Citation\n\nIf you use this dataset, please cite it, and credit {credit} and PyPI's "
        f"public download data it is built from:\n\n```bibtex\n@misc{{{key},\n{entry}\n}}\n```"
    )


def markdown_table(frame: pd.DataFrame) -> str:
    """Any frame as a Markdown table (for previews in the Dagster UI)."""
    rows = [[markdown_cell(value) for value in row] for row in frame.itertuples(index=False)]
    return _table([str(c) for c in frame.columns], rows)


def _table(header: list[str], rows, align: str | None = None) -> str:
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def utc_time(seconds: float) -> str:
    """Unix seconds as a UTC time a person reads; `—` for null, the raw value when it is no real time."""
    if seconds is None or seconds is pd.NA or np.isnan(seconds):
        return "—"
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):  # inf, or beyond year 9999
        return f"{seconds} (not a valid time)"
