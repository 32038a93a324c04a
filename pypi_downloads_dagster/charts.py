"""The two charts published next to the dataset: the download distribution and the top packages.

Rendering uses matplotlib's object-oriented API on an Agg canvas, never `pyplot`, whose global
figure registry is not thread-safe (Dagster runs assets in threads). PNGs carry no software or
time metadata, so the same frame always gives byte-identical files and an unchanged chart is never
re-committed. The statistics the charts (and the dataset card) show are small functions of plain
arrays so they can be tested directly.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .schema import COUNT_COLUMNS

CHART_FILES = ("download_distribution.png", "top_packages.png")
PERIOD_LABELS = {"last_day": "Last day", "last_week": "Last week", "last_month": "Last month"}
PERCENTILES = (50, 90, 95, 99)
TOP_N = 20
HISTOGRAM_BINS = 50

DPI = 100
DISTRIBUTION_SIZE = (18, 10)  # inches at DPI: 1800 x 1000 px
TOP_PACKAGES_SIZE = (14, 7.5)  # 1400 x 750 px
_PERCENTILE_COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple")
_BAR_COLORS = {"last_day": "tab:blue", "last_week": "tab:orange", "last_month": "tab:green"}
_CURVE_POINTS = 500  # points drawn per cumulative curve; the full curve has one per package
_NAME_WIDTH = 28  # longest package name shown under a bar before it is shortened


# --- statistics (also used by the dataset card) ------------------------------------------------


def known_counts(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The non-null values of a count column as float64 (works for Int64 and the old float64 layout)."""
    values = frame[column].to_numpy(dtype="float64", na_value=np.nan)
    return values[~np.isnan(values)]


def download_percentiles(values: np.ndarray, percentiles=PERCENTILES) -> dict[int, float]:
    """Percentiles of the positive counts, the values the log10 histogram shows; {} when none are positive."""
    positive = values[values > 0]
    if positive.size == 0:
        return {}
    return dict(zip(percentiles, np.percentile(positive, percentiles).tolist()))


def cumulative_share(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(k, share)`: share[i] is the fraction of all downloads held by the k[i] = i + 1 most downloaded packages.

    Only positive counts take part (a package with no downloads holds no share). Empty arrays when
    there are none.
    """
    positive = np.sort(values[values > 0])[::-1]
    if positive.size == 0:
        return np.array([], dtype=np.int64), np.array([], dtype=np.float64)
    return np.arange(1, positive.size + 1), np.cumsum(positive) / positive.sum()


def packages_holding(share: np.ndarray, fraction: float) -> int:
    """The smallest k whose top-k packages hold at least `fraction` of all downloads (0 when no data)."""
    if share.size == 0:
        return 0
    # The tolerance keeps float rounding in the cumulative sum from missing exactly 100%.
    return int(min(np.searchsorted(share, fraction - 1e-12) + 1, share.size))


def period_stats(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per count column, over rows with a count: `packages`, `total`, `mean`, `median`, `max` (NaN when none)."""
    stats = {}
    for column in COUNT_COLUMNS:
        values = known_counts(frame, column)
        empty = values.size == 0
        stats[column] = {
            "packages": int(values.size),
            "total": float(values.sum()),
            "mean": np.nan if empty else float(values.mean()),
            "median": np.nan if empty else float(np.median(values)),
            "max": np.nan if empty else float(values.max()),
        }
    return stats


def top_packages(frame: pd.DataFrame, n: int = TOP_N, by: str = "last_month") -> pd.DataFrame:
    """The `n` rows with the most `by` downloads (rows without a count excluded), most first, ties by name."""
    values = frame[by].to_numpy(dtype="float64", na_value=np.nan)
    candidates = np.flatnonzero(~np.isnan(values))
    if candidates.size > n:
        # Pre-select with a partition (linear time) so only the few rows at or above the n-th
        # largest value are sorted, instead of sorting 900k names.
        kth = candidates.size - n
        threshold = np.partition(values[candidates], kth)[kth]
        candidates = candidates[values[candidates] >= threshold]
    subset = frame.iloc[candidates]
    return subset.sort_values([by, "name"], ascending=[False, True], kind="stable").head(n).reset_index(drop=True)


# --- rendering -----------------------------------------------------------------------------------


def render_charts(frame: pd.DataFrame) -> dict[str, bytes]:
    """PNG bytes of both charts, keyed by the file names in `CHART_FILES`.

    Accepts any number of rows, including none or none with counts (the panels then say "no data
    yet"). Deterministic: the same frame gives the same bytes.
    """
    distribution, top = CHART_FILES
    return {distribution: _png(_distribution_figure(frame)), top: _png(_top_packages_figure(frame))}


def _distribution_figure(frame: pd.DataFrame) -> Figure:
    fig = Figure(figsize=DISTRIBUTION_SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 3)
    stats = period_stats(frame)
    for column, hist_ax, share_ax in zip(COUNT_COLUMNS, axes[0], axes[1]):
        values = known_counts(frame, column)
        _histogram(hist_ax, values, PERIOD_LABELS[column])
        _share_curve(share_ax, values, stats[column], PERIOD_LABELS[column])
    fig.suptitle(f"PyPI downloads per package ({len(frame):,} packages in the dataset)", fontsize=16)
    return fig


def _histogram(ax, values: np.ndarray, label: str) -> None:
    positive = values[values > 0]
    title = f"{label}: {positive.size:,} packages with downloads"
    if positive.size == 0:
        return _no_data(ax, title)
    ax.hist(np.log10(positive), bins=HISTOGRAM_BINS, color="tab:blue", alpha=0.75)
    for (q, value), color in zip(download_percentiles(values).items(), _PERCENTILE_COLORS):
        ax.axvline(np.log10(value), color=color, linestyle="--", linewidth=1.5, label=f"P{q}: {_exact(value)}")
    ax.legend(loc="upper right", fontsize=9)
    # The axis is log10(downloads); label its ticks with the downloads themselves.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _short(10**x)))
    ax.set(title=title, xlabel="downloads (log scale)", ylabel="packages")
    ax.grid(alpha=0.3)


def _share_curve(ax, values: np.ndarray, stats: dict[str, float], label: str) -> None:
    k, share = cumulative_share(values)
    title = f"{label}: share of downloads held by the top k"
    if k.size == 0:
        return _no_data(ax, title)
    # One point per package is 900k points; a few hundred log-spaced ones draw the same curve.
    index = np.unique(np.geomspace(1, k.size, _CURVE_POINTS).round().astype(np.int64)) - 1
    ax.plot(k[index], share[index] * 100, color="tab:blue", linewidth=2)
    ax.set_xscale("log")
    ax.set_ylim(0, 102)
    for fraction, color in ((0.5, "tab:orange"), (0.9, "tab:red")):
        top = packages_holding(share, fraction)
        ax.axvline(top, color=color, linestyle=":", linewidth=1.2, label=f"top {top:,} hold {fraction:.0%}")
    ax.legend(loc="upper left", fontsize=9)
    summary = "\n".join(
        f"{name}: {_exact(stats[key])}" for name, key in (("total", "total"), ("mean", "mean"), ("median", "median"), ("max", "max"))
    )
    ax.text(0.97, 0.05, summary, transform=ax.transAxes, ha="right", va="bottom", family="monospace", fontsize=10,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "0.7"})
    ax.set(title=title, xlabel="top k packages (log scale)", ylabel="share of downloads (%)")
    ax.grid(alpha=0.3, which="both")


def _top_packages_figure(frame: pd.DataFrame) -> Figure:
    fig = Figure(figsize=TOP_PACKAGES_SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    top = top_packages(frame)
    title = f"Top {TOP_N} packages by downloads in the last month"
    if top.empty:
        _no_data(ax, title)
        return fig
    x = np.arange(len(top))
    width = 0.27
    heights = top[list(COUNT_COLUMNS)].to_numpy(dtype="float64", na_value=np.nan)
    # A zero or unknown count has no bar on a log axis; NaN leaves a gap instead of a bogus bar.
    heights[~(heights > 0)] = np.nan
    for offset, column, column_heights in zip((-width, 0, width), COUNT_COLUMNS, heights.T):
        ax.bar(x + offset, column_heights, width, label=PERIOD_LABELS[column], color=_BAR_COLORS[column])
    ax.set_yscale("log")
    ax.set_xlim(-0.6, len(top) - 0.4)  # NaN bars do not count in autoscaling; keep every slot in view
    if not np.isnan(heights).all():
        # Start a decade below the smallest bar (so a bar of 1 is visible) and leave room above the largest.
        ax.set_ylim(10 ** np.floor(np.log10(np.nanmin(heights) / 2)), np.nanmax(heights) * 2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: _short(y)))
    names = [name if len(name) <= _NAME_WIDTH else name[: _NAME_WIDTH - 1] + "…" for name in top["name"]]
    ax.set_xticks(x, names, rotation=45, ha="right", rotation_mode="anchor", fontsize=10)
    ax.set(title=title, ylabel="downloads (log scale)")
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3, which="major")
    return fig


def _no_data(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center", fontsize=18, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches an Agg canvas to this figure only; no global backend state
    buffer = io.BytesIO()
    # No "Software" entry: the PNG bytes then depend on the pixels alone.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _exact(value: float) -> str:
    """A count with thousands separators; one decimal when it is not whole (means, medians)."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _short(value: float) -> str:
    """Compact tick label: 1, 10, 100, 1K, 10K, 1M, 1B."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"
