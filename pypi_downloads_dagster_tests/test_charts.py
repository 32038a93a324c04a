"""Charts: the statistics they show (checked against independent numpy/pandas computations) and PNG output."""

from __future__ import annotations

import io
import subprocess
import sys
import threading

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from pypi_downloads_dagster import charts
from pypi_downloads_dagster.charts import (
    CHART_FILES,
    PERCENTILES,
    cumulative_share,
    download_percentiles,
    known_counts,
    packages_holding,
    period_stats,
    render_charts,
    top_packages,
)
from pypi_downloads_dagster.schema import COUNT_COLUMNS, empty_dataset
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


def test_percentiles_are_over_positive_counts_only():
    frame = make_frame(2000)
    values = known_counts(frame, "last_week")
    got = download_percentiles(values)
    positive = frame["last_week"].dropna()
    positive = positive[positive > 0].astype("float64")
    assert list(got) == list(PERCENTILES)
    for q, value in got.items():
        assert value == pytest.approx(positive.quantile(q / 100))
    assert list(got.values()) == sorted(got.values())


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
        assert labels == [f"P{q}: {charts._exact(v)}" for q, v in expected.items()]
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
        "from pypi_downloads_dagster.charts import render_charts\n"
        "from pypi_downloads_dagster.schema import empty_dataset\n"
        "render_charts(empty_dataset())\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
