"""Charts: the statistics they show (checked against independent numpy/pandas computations) and PNG output."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import subprocess
import sys
import threading

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pypi_downloads_dagster.publishing import charts
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from pypi_downloads_dagster.publishing.charts import (
    CHART_FILES,
    PERCENTILES,
    TREND_CHART,
    chart_thumbnails_markdown,
    cumulative_share,
    download_percentiles,
    known_counts,
    packages_holding,
    period_stats,
    render_charts,
    render_trend_chart,
    snapshot_date,
    top_packages,
)
from pypi_downloads_dagster.dataset.schema import COUNT_COLUMNS, empty_dataset
from pypi_downloads_dagster_tests.synthetic import synthetic_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_frame(rows: int, seed: int = 1, valid_share: float = 0.6) -> pd.DataFrame:
    """A conformed dataset with heavy-tailed counts, some zeros, some 'empty' and never-fetched rows."""
    return synthetic_dataset(rows, seed=seed, valid_share=valid_share, log_mean=3.0)


def test_known_counts_drops_nulls_for_new_and_old_layouts():
    new = pd.DataFrame({"last_month": pd.array([3, None, 0], dtype="Int64")})
    old = pd.DataFrame({"last_month": [3.0, np.nan, 0.0]})
    for frame in (new, old):
        assert known_counts(frame, "last_month").tolist() == [3.0, 0.0]


def test_percentiles_are_whole_counts_over_positive_counts_only():
    frame = make_frame(2000)
    values = known_counts(frame, "last_week")
    got = download_percentiles(values)
    positive = np.sort(frame["last_week"].dropna().to_numpy(dtype="int64"))
    positive = positive[positive > 0]
    assert list(got) == list(PERCENTILES)
    for q, value in got.items():
        # The smallest count with at least q% of the packages at or below it.
        at_or_below = (positive <= value).mean()
        assert type(value) is int and value in positive
        assert at_or_below >= q / 100 > (positive < value).mean()
    assert list(got.values()) == sorted(got.values())


def test_percentiles_by_hand():
    # Interpolating would give P50 = 2.5 and P90 = 7.3 downloads.
    assert download_percentiles(np.array([0.0, 1.0, 2.0, 3.0, 9.0])) == {50: 2, 90: 9, 95: 9, 99: 9}
    assert download_percentiles(np.array([1.0, 2.0, 3.0, 4.0]), percentiles=(50,)) == {50: 2}


def test_percentiles_of_no_positive_values_are_empty():
    assert download_percentiles(np.array([0.0, 0.0])) == {}
    assert download_percentiles(np.array([])) == {}


def test_cumulative_share_by_hand():
    k, share = cumulative_share(np.array([1.0, 0.0, 6.0, 3.0]))
    assert k.tolist() == [1, 2, 3]
    assert share == pytest.approx([0.6, 0.9, 1.0])


def test_cumulative_share_properties():
    values = known_counts(make_frame(3000), "last_month")
    k, share = cumulative_share(values)
    assert len(k) == len(share) == (values > 0).sum()
    assert np.all(np.diff(share) >= 0)
    assert share[-1] == pytest.approx(1.0)
    assert share[0] == pytest.approx(values.max() / values.sum())


def test_packages_holding():
    share = np.array([0.6, 0.9, 1.0])
    assert packages_holding(share, 0.5) == 1
    assert packages_holding(share, 0.6) == 1
    assert packages_holding(share, 0.61) == 2
    assert packages_holding(share, 1.0) == 3
    assert packages_holding(np.array([]), 0.5) == 0


def test_period_stats_match_pandas():
    frame = make_frame(500)
    stats = period_stats(frame)
    for column in COUNT_COLUMNS:
        series = frame[column].dropna().astype("float64")
        assert stats[column]["packages"] == len(series)
        assert stats[column]["total"] == series.sum()
        assert stats[column]["mean"] == pytest.approx(series.mean())
        assert stats[column]["median"] == series.median()
        assert stats[column]["max"] == series.max()


def test_period_stats_without_counts():
    stats = period_stats(empty_dataset())
    assert all(s["packages"] == 0 and s["total"] == 0 and np.isnan(s["median"]) for s in stats.values())


def test_top_packages_matches_a_full_sort():
    frame = make_frame(5000)
    # Ties on last_month are common among small counts; make some among the top as well.
    frame.loc[frame["last_month"].notna().to_numpy().nonzero()[0][:5], "last_month"] = int(frame["last_month"].max())
    expected = frame.dropna(subset=["last_month"]).sort_values(["last_month", "name"], ascending=[False, True])
    got = top_packages(frame)
    assert got["name"].tolist() == expected["name"].head(20).tolist()
    assert got.index.tolist() == list(range(20))


def test_top_packages_small_and_empty():
    frame = make_frame(30, valid_share=0.3)
    valid = int(frame["last_month"].notna().sum())
    assert 0 < valid < 20
    top = top_packages(frame)
    assert len(top) == valid
    assert top["last_month"].is_monotonic_decreasing
    assert top_packages(empty_dataset()).empty


# --- rendering -----------------------------------------------------------------------------------


def image_shape(data: bytes) -> tuple[int, ...]:
    assert data.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(data), format="png").shape


@pytest.fixture(scope="module")
def rendered():
    frame = make_frame(3000)
    return frame, render_charts(frame)


def test_render_charts_gives_both_pngs_at_fixed_size(rendered):
    _, pngs = rendered
    assert tuple(pngs) == CHART_FILES
    width, height = charts.DISTRIBUTION_SIZE
    assert image_shape(pngs["download_distribution.png"])[:2] == (height * charts.DPI, width * charts.DPI)
    width, height = charts.TOP_PACKAGES_SIZE
    assert image_shape(pngs["top_packages.png"])[:2] == (height * charts.DPI, width * charts.DPI)


def test_render_charts_is_deterministic_and_depends_on_the_data(rendered):
    frame, pngs = rendered
    assert render_charts(frame.copy()) == pngs
    changed = frame.copy()
    changed.loc[changed["last_month"].notna(), "last_month"] += 1000
    assert render_charts(changed)["top_packages.png"] != pngs["top_packages.png"]


def test_render_charts_without_software_metadata(rendered):
    _, pngs = rendered
    assert all(b"matplotlib" not in data.lower() for data in pngs.values())


@pytest.mark.parametrize(
    "frame",
    [empty_dataset(), make_frame(50, valid_share=0.0), make_frame(1, valid_share=1.0)],
    ids=["empty", "no-valid-rows", "one-row"],
)
def test_render_charts_without_data(frame):
    for data in render_charts(frame).values():
        assert len(image_shape(data)) == 3


def test_no_data_panels_say_so():
    texts = [t.get_text() for t in charts._top_packages_figure(empty_dataset()).axes[0].texts]
    assert "no data yet" in texts
    fig = charts._distribution_figure(make_frame(40, valid_share=0.0))
    assert all("no data yet" in [t.get_text() for t in ax.texts] for ax in fig.axes)


def test_histograms_draw_the_percentile_lines():
    frame = make_frame(2000)
    fig = charts._distribution_figure(frame)
    for column, ax in zip(COUNT_COLUMNS, fig.axes[:3]):
        expected = download_percentiles(known_counts(frame, column))
        xs = [line.get_xdata()[0] for line in ax.get_lines()]
        assert xs == pytest.approx(np.log10(list(expected.values())))
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert labels == [f"P{q}: {v:,}" for q, v in expected.items()]
        assert not any("." in label for label in labels)
        assert sum(patch.get_height() for patch in ax.patches) == (known_counts(frame, column) > 0).sum()
        assert len(ax.patches) == charts.HISTOGRAM_BINS


def test_share_panels_show_the_stats():
    frame = make_frame(800)
    fig = charts._distribution_figure(frame)
    for column, ax in zip(COUNT_COLUMNS, fig.axes[3:]):
        text = "\n".join(t.get_text() for t in ax.texts)
        assert f"max: {charts._exact(frame[column].max())}" in text
        assert f"total: {charts._exact(frame[column].sum())}" in text
        assert ax.get_xscale() == "log"


def test_top_packages_chart_bars_and_names():
    frame = make_frame(1000)
    ax = charts._top_packages_figure(frame).axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == top_packages(frame)["name"].tolist()
    assert len(ax.patches) == 3 * 20


def test_render_charts_in_threads_matches_serial(rendered):
    frame, expected = rendered
    results = [None] * 2

    def work(i):
        results[i] = render_charts(frame)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 2


def test_rendering_never_imports_pyplot():
    code = (
        "import sys\n"
        "from pypi_downloads_dagster.publishing.charts import render_charts\n"
        "from pypi_downloads_dagster.dataset.schema import empty_dataset\n"
        "render_charts(empty_dataset())\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- whole counts on count axes, snapshot date ---------------------------------------------------


def tick_labels(axis) -> list[str]:
    return [label.get_text() for label in axis.get_majorticklabels() if label.get_text()]


def whole_count(label: str) -> bool:
    """A tick label that reads as a whole number of downloads or packages (1, 20, 1K, 2.5K, 1M)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMB]?)", label.replace(",", "").replace("\u2212", "-"))
    if not match:
        return False
    value = float(match.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[match.group(2)]
    return value.is_integer()


@pytest.mark.parametrize("rows, valid_share, log_mean", [(3, 1.0, 0.5), (8, 1.0, 1.0), (40, 0.8, 2.0), (3000, 0.6, 3.0)])
def test_count_axes_have_whole_tick_labels(rows, valid_share, log_mean):
    frame = synthetic_dataset(rows, seed=1, valid_share=valid_share, log_mean=log_mean)
    distribution, top = charts._distribution_figure(frame), charts._top_packages_figure(frame)
    for fig in (distribution, top):
        FigureCanvasAgg(fig).draw()
    count_axes = [ax.xaxis for ax in distribution.axes]  # downloads (histograms), top k packages (share curves)
    count_axes += [ax.yaxis for ax in distribution.axes[:3]]  # packages per bin
    count_axes += [top.axes[0].yaxis]  # downloads
    for axis in count_axes:
        labels = tick_labels(axis)
        if axis.axes.texts and "no data yet" in [t.get_text() for t in axis.axes.texts]:
            continue
        assert labels, f"{axis.axes.get_title()}: no labelled ticks"
        assert all(whole_count(label) for label in labels), (axis.axes.get_title(), labels)


def test_count_tick_labels():
    assert charts._count_tick(1000.0000000001) == "1K"
    assert charts._count_tick(1.9) == charts._count_tick(999.5) == ""
    assert charts._count_tick(2.0000000000000004) == "2"
    assert charts._count_tick(2.5) == charts._count_tick(0.1) == charts._count_tick(-1) == ""
    assert charts._count_tick(0) == "0"


def test_log_ticks():
    assert charts._log_ticks(1, 15) == [1, 2, 5, 10, 20]
    assert charts._log_ticks(5, 15) == [2, 5, 10, 20]
    assert charts._log_ticks(1, 373_041) == [1, 10, 100, 1000, 10_000, 100_000, 1_000_000]
    assert charts._log_ticks(1, 1) == [1, 2]


def test_snapshot_date_is_the_newest_fetch_in_utc():
    frame = make_frame(30)
    newest = frame["updated_at"].max()
    assert snapshot_date(frame) == dt.datetime.fromtimestamp(newest, dt.UTC).date().isoformat()
    # 23:59:59 UTC is still that day whatever the local time zone.
    assert snapshot_date(frame.assign(updated_at=1_709_251_199.0)) == "2024-02-29"
    assert snapshot_date(frame.assign(updated_at=np.nan)) is None


def test_charts_state_their_snapshot_date():
    frame = make_frame(300)
    old = frame.assign(updated_at=frame["updated_at"] - 5 * 365 * 86400)  # the same rows, fetched in 2019
    for data, date in ((frame, "2024-02-29"), (old, snapshot_date(old))):
        assert date.startswith(("2024", "2019"))
        assert f"snapshot {date} (UTC)" in charts._distribution_figure(data).get_suptitle()
        assert f"snapshot {date} (UTC)" in charts._top_packages_figure(data).axes[0].get_title()
    assert render_charts(old) != render_charts(frame)
    assert "no rows fetched yet" in charts._distribution_figure(empty_dataset()).get_suptitle()
    assert "no rows fetched yet" in charts._top_packages_figure(empty_dataset()).axes[0].get_title()


# --- thumbnails ----------------------------------------------------------------------------------


def thumbnails(markdown: str) -> dict[str, str]:
    return dict(re.findall(r"!\[([^\]]+)\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", markdown))


def test_chart_thumbnails_are_small_decodable_pngs(rendered):
    _, pngs = rendered
    markdown = chart_thumbnails_markdown(pngs)
    uris = thumbnails(markdown)
    assert list(uris) == list(CHART_FILES)
    for name, uri in uris.items():
        assert len(uri) < 60_000, name
        data = base64.b64decode(uri.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            full = Image.open(io.BytesIO(pngs[name]))
            assert image.width == 480 and abs(image.height - full.height * 480 / full.width) <= 1
        assert f"**{name}**" in markdown
    assert chart_thumbnails_markdown(pngs) == markdown, "deterministic"


def test_chart_thumbnails_shrink_to_fit_the_size_bound(rendered):
    _, pngs = rendered
    uris = thumbnails(chart_thumbnails_markdown(pngs, max_width=640, max_uri_bytes=12_000))
    assert list(uris) == list(CHART_FILES)
    for name, uri in uris.items():
        assert len(uri) <= 12_000
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
            assert image.width < 640
    assert chart_thumbnails_markdown({}) == ""


# --- download trend --------------------------------------------------------------------------------


def trend_rows(days: int = 90, names=("boto3", "urllib3", "requests"), seed: int = 3, end=dt.date(2026, 11, 24)) -> pd.DataFrame:
    """Daily downloads of a few projects over `days` days up to `end`, as the caller passes them."""
    rng = np.random.default_rng(seed)
    rows = [
        (end - dt.timedelta(days=offset), name, int(10 ** (6 - rank) * rng.uniform(0.5, 1.5)))
        for offset in range(days - 1, -1, -1)
        for rank, name in enumerate(names)
    ]
    return pd.DataFrame(rows, columns=["date", "name", "downloads"])


def line_data(fig) -> dict[str, tuple[list, list[float]]]:
    """Per plotted line: its legend name (before the total) and its x (as dates) and y values."""
    ax = fig.axes[0]
    out = {}
    for line in ax.get_lines():
        name = line.get_label().rsplit(": ", 1)[0]
        xs = [pd.Timestamp(x).date() for x in line.get_xdata()]
        out[name] = (xs, [float(y) for y in line.get_ydata()])
    return out


def test_trend_lines_by_hand():
    trend = pd.DataFrame(
        {
            "date": [dt.date(2026, 1, 1), dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 4), dt.date(2026, 1, 4), dt.date(2026, 1, 4)],
            "name": ["small", "big", "big", "big", "late", "late"],
            "downloads": [5, 100, 120, 90, 300, 1],
        }
    )
    lines = charts.trend_lines(trend)
    # Ordered by total over the range: big 310, late 301, small 5.
    assert list(lines.columns) == ["big", "late", "small"]
    # Only the days that have a row; Jan 3 has none for anyone and is not invented.
    assert [d.date() for d in lines.index] == [dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 4)]
    assert lines["big"].tolist() == [100, 120, 90]
    assert lines["late"].tolist() == [0, 0, 301]  # missing days are 0; two rows of one day are summed
    assert lines["small"].tolist() == [5, 0, 0]
    assert str(lines.dtypes.unique()[0]) == "int64"


def test_trend_lines_order_ties_by_name_and_ignore_row_order():
    trend = pd.DataFrame({"date": [dt.date(2026, 1, 1)] * 3, "name": ["b", "c", "a"], "downloads": [7, 9, 7]})
    assert list(charts.trend_lines(trend).columns) == ["c", "a", "b"]
    assert list(charts.trend_lines(trend.iloc[::-1]).columns) == ["c", "a", "b"]


def test_trend_lines_accepts_dates_timestamps_and_arrow_dates():
    trend = trend_rows(days=5)
    expected = charts.trend_lines(trend)
    as_datetime64 = trend.assign(date=pd.to_datetime(trend["date"]))
    as_arrow = trend.assign(date=pd.array(trend["date"], dtype=pd.ArrowDtype(pa.date32())))  # what top_trend returns
    with_times = trend.assign(date=pd.to_datetime(trend["date"]) + pd.Timedelta(hours=13))
    for variant in (as_datetime64, as_arrow, with_times):
        pd.testing.assert_frame_equal(charts.trend_lines(variant), expected, check_index_type=False)
        assert render_trend_chart(variant) == render_trend_chart(trend)


def test_trend_lines_of_no_rows():
    assert charts.trend_lines(trend_rows().iloc[0:0]).empty


def test_trend_chart_is_a_png_of_the_size_of_top_packages():
    data = render_trend_chart(trend_rows())
    width, height = charts.TREND_SIZE
    assert charts.TREND_SIZE == charts.TOP_PACKAGES_SIZE
    assert image_shape(data)[:2] == (height * charts.DPI, width * charts.DPI) == (750, 1400)
    assert b"matplotlib" not in data.lower()


def test_trend_chart_is_deterministic_and_depends_on_the_data():
    trend = trend_rows()
    data = render_trend_chart(trend)
    assert render_trend_chart(trend.copy()) == data
    assert render_trend_chart(trend.sample(frac=1.0, random_state=0)) == data, "row order does not matter"
    changed = trend.copy()
    changed.loc[changed["name"] == "requests", "downloads"] *= 3
    assert render_trend_chart(changed) != data


def test_trend_chart_without_rows_says_no_history_yet():
    empty = pd.DataFrame({"date": pd.Series([], dtype="object"), "name": pd.Series([], dtype=str), "downloads": pd.Series([], dtype="int64")})
    data = render_trend_chart(empty)
    width, height = charts.TREND_SIZE
    assert image_shape(data)[:2] == (height * charts.DPI, width * charts.DPI)
    ax = charts._trend_figure(empty).axes[0]
    assert "no history yet" in [t.get_text() for t in ax.texts]
    assert not ax.get_lines()


def test_trend_chart_title_legend_and_lines():
    trend = trend_rows(names=("alpha", "zulu", "mike"))  # about 1M, 100K and 10K a day
    # Totals in an order that is neither the input order nor the name order: mike, zulu, alpha.
    trend.loc[trend["name"] == "mike", "downloads"] *= 1000
    trend.loc[trend["name"] == "zulu", "downloads"] *= 50
    fig = charts._trend_figure(trend)
    ax = fig.axes[0]
    assert ax.get_title() == "Daily downloads of the top 3 projects, 2026-08-27 to 2026-11-24"
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    totals = trend.groupby("name")["downloads"].sum().sort_values(ascending=False)
    assert labels == [f"{name}: {total:,}" for name, total in totals.items()]
    lines = line_data(fig)
    assert list(lines) == ["mike", "zulu", "alpha"] == list(totals.index)
    xs, ys = lines["mike"]
    mike = trend[trend["name"] == "mike"]
    assert xs == mike["date"].tolist() and ys == mike["downloads"].astype(float).tolist()
    assert "a day without downloads is drawn at the bottom edge" not in [t.get_text() for t in ax.texts]


def test_trend_chart_draws_a_missing_day_as_zero():
    trend = trend_rows(days=30)
    gap = dt.date(2026, 11, 10)
    trend = trend[~((trend["name"] == "urllib3") & (trend["date"] == gap))]
    fig = charts._trend_figure(trend)
    xs, ys = line_data(fig)["urllib3"]
    assert len(xs) == 30 and ys[xs.index(gap)] == 0.0
    assert all(y > 0 for x, y in zip(xs, ys) if x != gap)
    ax = fig.axes[0]
    assert "a day without downloads is drawn at the bottom edge" in [t.get_text() for t in ax.texts]
    # The bottom edge (where a 0 is drawn) lies below the lowest labelled tick, so 0 reads as no count.
    FigureCanvasAgg(fig).draw()
    lowest = min(t for t, label in zip(ax.get_yticks(), tick_labels(ax.yaxis)) if label)
    assert ax.get_ylim()[0] < lowest


def test_trend_chart_count_axis_has_whole_tick_labels_and_date_axis_has_days():
    for trend in (trend_rows(), trend_rows(days=4), trend_rows(days=1), trend_rows(names=("only",))):
        fig = charts._trend_figure(trend)
        FigureCanvasAgg(fig).draw()
        ax = fig.axes[0]
        labels = tick_labels(ax.yaxis)
        assert labels and all(whole_count(label) for label in labels), labels
        dates = tick_labels(ax.xaxis)
        assert dates and not any(":" in label for label in dates), dates  # days, never hours
    one_day = charts._trend_figure(trend_rows(days=1))
    assert one_day.axes[0].get_title() == "Daily downloads of the top 3 projects, on 2026-11-24"
    assert len(one_day.axes[0].get_lines()[0].get_xdata()) == 1 and one_day.axes[0].get_lines()[0].get_marker() == "o"
    assert charts._trend_figure(trend_rows(names=("only",))).axes[0].get_title().startswith("Daily downloads of the top project,")


def test_render_charts_adds_the_trend_only_when_given(rendered):
    frame, pngs = rendered
    trend = trend_rows()
    with_trend = render_charts(frame, trend=trend)
    assert tuple(with_trend) == (*CHART_FILES, TREND_CHART)
    assert {name: with_trend[name] for name in CHART_FILES} == pngs
    assert with_trend[TREND_CHART] == render_trend_chart(trend)
    assert tuple(render_charts(frame, trend=None)) == CHART_FILES
    assert tuple(render_charts(frame, trend=trend.iloc[0:0])) == (*CHART_FILES, TREND_CHART)
