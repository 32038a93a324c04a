"""The charts published next to the dataset: the download distribution, the top packages and, when
the caller has the daily history, the download trend of the top projects.

Rendering uses matplotlib's object-oriented API on an Agg canvas, never `pyplot`, whose global
figure registry is not thread-safe (Dagster runs assets in threads). PNGs carry no software or
time metadata, so the same frame always gives byte-identical files and an unchanged chart is never
re-committed. The statistics the charts (and the dataset card) show are small functions of plain
arrays so they can be tested directly. Each chart names its snapshot date, the newest `updated_at`
in the frame (never the wall clock, which would change the bytes of an unchanged dataset); the
trend chart names the date range of its rows.
"""

from __future__ import annotations

import base64
import datetime as dt
import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DateFormatter, DayLocator
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter
from PIL import Image  # Pillow is a dependency of matplotlib

from pypi_downloads_dagster.dataset.schema import COUNT_COLUMNS

CHART_FILES = ("download_distribution.png", "top_packages.png")
#: Drawn only when `render_charts` is given the daily downloads of the top projects.
TREND_CHART = "download_trend.png"
PERIOD_LABELS = {"last_day": "Last day", "last_week": "Last week", "last_month": "Last month"}
PERCENTILES = (50, 90, 95, 99)
TOP_N = 20
HISTOGRAM_BINS = 50

DPI = 100
DISTRIBUTION_SIZE = (18, 10)  # inches at DPI: 1800 x 1000 px
TOP_PACKAGES_SIZE = (14, 7.5)  # 1400 x 750 px
TREND_SIZE = TOP_PACKAGES_SIZE  # 1400 x 750 px, like top_packages.png beside it
_PERCENTILE_COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple")
_BAR_COLORS = {"last_day": "tab:blue", "last_week": "tab:orange", "last_month": "tab:green"}
_CURVE_POINTS = 500  # points drawn per cumulative curve; the full curve has one per package
_NAME_WIDTH = 28  # longest package name shown under a bar before it is shortened
THUMBNAIL_MAX_URI_BYTES = 60_000  # per data URI; Dagster stores metadata in its run database


# --- statistics (also used by the dataset card) ------------------------------------------------


def known_counts(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The non-null values of a count column as float64 (works for Int64 and the old float64 layout)."""
    values = frame[column].to_numpy(dtype="float64", na_value=np.nan)
    return values[~np.isnan(values)]


def download_percentiles(values: np.ndarray, percentiles=PERCENTILES) -> dict[int, int]:
    """Percentiles of the positive counts, the values the log10 histogram shows; {} when none are positive.

    Pq is the smallest count v such that at least q% of those packages have v downloads or fewer:
    a count some package has, never an interpolated fraction of a download.
    """
    positive = values[values > 0]
    if positive.size == 0:
        return {}
    return {q: int(v) for q, v in zip(percentiles, np.percentile(positive, percentiles, method="inverted_cdf"))}


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


def snapshot_date(frame: pd.DataFrame) -> str | None:
    """The UTC date (YYYY-MM-DD) of the newest `updated_at` in `frame`; None when no row was fetched."""
    updated = frame["updated_at"].to_numpy(dtype="float64", na_value=np.nan)
    if np.isnan(updated).all():
        return None
    return dt.datetime.fromtimestamp(float(np.nanmax(updated)), dt.UTC).strftime("%Y-%m-%d")


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


def trend_lines(trend: pd.DataFrame) -> pd.DataFrame:
    """The daily downloads in `trend` (columns `date`, `name`, `downloads`) as one column per project:
    indexed by the days that have any row (datetime64, ascending), a project's missing day is 0,
    columns ordered by total downloads over those days (most first, ties by name). Rows of one
    project and day are summed; a time of day is dropped. Empty when `trend` has no rows."""
    if trend.empty:
        return pd.DataFrame(index=pd.DatetimeIndex([], name="date"), dtype="int64")
    rows = pd.DataFrame(
        {
            "date": pd.to_datetime(trend["date"]).dt.normalize().to_numpy(),
            "name": trend["name"].astype(str).to_numpy(),
            "downloads": trend["downloads"].to_numpy(dtype="int64"),
        }
    )
    wide = rows.pivot_table(index="date", columns="name", values="downloads", aggfunc="sum", fill_value=0).astype("int64")
    totals = wide.sum()
    order = sorted(totals.index, key=lambda name: (-int(totals[name]), name))
    wide = wide[order].sort_index()
    wide.columns.name = None
    return wide


# --- rendering -----------------------------------------------------------------------------------


def render_charts(frame: pd.DataFrame, *, trend: pd.DataFrame | None = None) -> dict[str, bytes]:
    """PNG bytes of the charts, keyed by file name: the two of `CHART_FILES`, and `TREND_CHART` when
    `trend` (daily downloads of the top projects, see `render_trend_chart`) is given.

    Accepts any number of rows, including none or none with counts (the panels then say "no data
    yet"). Deterministic: the same frame gives the same bytes.
    """
    distribution, top = CHART_FILES
    images = {distribution: _png(_distribution_figure(frame)), top: _png(_top_packages_figure(frame))}
    if trend is not None:
        images[TREND_CHART] = render_trend_chart(trend)
    return images


def render_trend_chart(trend: pd.DataFrame) -> bytes:
    """PNG bytes of `TREND_CHART`: one line per project of `trend` (columns `date`: datetime.date or
    datetime64, `name`, `downloads`) over its days, log y axis, the legend ordered by total downloads.

    Meant for a handful of projects (the top 10 over the last 90 days). A project without a row on a
    day that other projects have is drawn at 0 for that day (at the bottom edge of the log axis); no
    rows give a chart saying "no history yet". Deterministic: the same rows, in any order, give the
    same bytes.
    """
    return _png(_trend_figure(trend))


def _distribution_figure(frame: pd.DataFrame) -> Figure:
    fig = Figure(figsize=DISTRIBUTION_SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 3)
    stats = period_stats(frame)
    for column, hist_ax, share_ax in zip(COUNT_COLUMNS, axes[0], axes[1]):
        values = known_counts(frame, column)
        _histogram(hist_ax, values, PERIOD_LABELS[column])
        _share_curve(share_ax, values, stats[column], PERIOD_LABELS[column])
    fig.suptitle(f"PyPI downloads per package ({len(frame):,} packages in the dataset), {_snapshot_label(frame)}", fontsize=16)
    return fig


def _histogram(ax, values: np.ndarray, label: str) -> None:
    positive = values[values > 0]
    title = f"{label}: {positive.size:,} packages with downloads"
    if positive.size == 0:
        return _no_data(ax, title)
    ax.hist(np.log10(positive), bins=HISTOGRAM_BINS, color="tab:blue", alpha=0.75)
    for (q, value), color in zip(download_percentiles(values).items(), _PERCENTILE_COLORS):
        ax.axvline(np.log10(value), color=color, linestyle="--", linewidth=1.5, label=f"P{q}: {value:,}")
    ax.legend(loc="upper right", fontsize=9)
    # The axis is log10(downloads); tick it at whole download counts and label them with the counts.
    ax.xaxis.set_major_locator(FixedLocator(np.log10(_log_ticks(positive.min(), positive.max()))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _count_tick(10**x)))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # packages come in whole numbers
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
    # k starts at 1 package; at least a decade wide so a handful of packages still gets labelled ticks.
    ax.set_xlim(1, max(k.size, 10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _count_tick(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
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
    title = f"Top {TOP_N} packages by downloads in the last month, {_snapshot_label(frame)}"
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
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: _count_tick(y)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    names = [name if len(name) <= _NAME_WIDTH else name[: _NAME_WIDTH - 1] + "…" for name in top["name"]]
    ax.set_xticks(x, names, rotation=45, ha="right", rotation_mode="anchor", fontsize=10)
    ax.set(title=title, ylabel="downloads (log scale)")
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3, which="major")
    return fig


def _trend_figure(trend: pd.DataFrame) -> Figure:
    fig = Figure(figsize=TREND_SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    lines = trend_lines(trend)
    if lines.empty:
        _no_data(ax, "Daily downloads of the top projects", text="no history yet")
        return fig
    first, last = lines.index[0].date(), lines.index[-1].date()
    projects = "project" if lines.shape[1] == 1 else f"{lines.shape[1]} projects"
    span = f"{first:%Y-%m-%d} to {last:%Y-%m-%d}" if first != last else f"on {first:%Y-%m-%d}"
    title = f"Daily downloads of the top {projects}, {span}"
    values = lines.to_numpy(dtype="float64")
    positive = values[values > 0]
    if positive.size == 0:
        _no_data(ax, title, text="no downloads in these days")
        return fig
    # A single day is a point, not a line: mark it so it shows.
    marker = "o" if len(lines) == 1 else None
    for name in lines.columns:
        label = name if len(name) <= _NAME_WIDTH else name[: _NAME_WIDTH - 1] + "…"
        ax.plot(lines.index.to_numpy(), lines[name].to_numpy(dtype="float64"), marker=marker, linewidth=1.8,
                label=f"{label}: {int(lines[name].sum()):,}")
    # Zeros have no place on a log axis: "clip" draws them at the bottom edge, which is kept below
    # the lowest labelled tick so that a 0 cannot be read as that count.
    ax.set_yscale("log", nonpositive="clip")
    ticks = _log_ticks(positive.min(), positive.max())
    has_zero = bool((values == 0).any())
    ax.set_ylim(ticks[0] / 2 if has_zero else ticks[0], ticks[-1])
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: _count_tick(y)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    # Half a day of room at each end, so a line that starts or ends at the edge stays visible.
    half_day = pd.Timedelta(hours=12)
    ax.set_xlim(lines.index[0] - half_day, lines.index[-1] + half_day)
    if (lines.index[-1] - lines.index[0]).days < 14:
        # Days are the unit: a short range gets a tick per day, never ticks at hours.
        ax.xaxis.set_major_locator(DayLocator())
        ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    else:
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if has_zero:
        ax.text(0.01, 0.01, "a day without downloads is drawn at the bottom edge", transform=ax.transAxes,
                ha="left", va="bottom", fontsize=9, color="0.4")
    ax.set(title=title, xlabel="date (UTC)", ylabel="downloads per day (log scale)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="total in these days", fontsize=9)
    ax.grid(alpha=0.3, which="major")
    return fig


def _snapshot_label(frame: pd.DataFrame) -> str:
    date = snapshot_date(frame)
    return f"snapshot {date} (UTC)" if date else "no rows fetched yet"


def _no_data(ax, title: str, text: str = "no data yet") -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=18, color="0.5")
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


def _log_ticks(low: float, high: float) -> list[int]:
    """Whole counts to tick a log axis spanning `low`..`high` (>= 1): the decades, or 1-2-5 steps when
    the span is two decades or less (MaxNLocator would fall back to fractional positions there)."""
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    steps = (1,) if len(decades) > 3 else (1, 2, 5)
    ticks = [step * 10**d for d in decades for step in steps]
    inside = [t for t in ticks if low <= t <= high]
    # Keep the neighbours just outside the data so the ends of the axis are labelled too.
    below = [t for t in ticks if t < low][-1:]
    above = [t for t in ticks if t > high][:1]
    return below + inside + above


def _count_tick(value: float) -> str:
    """A tick label on a count axis: whole counts only; the decade below 1 (room for a bar of 1) stays blank."""
    whole = round(value)
    if whole < 0 or (value < 1 and value != 0) or abs(value - whole) > 1e-6 * max(1.0, abs(value)):
        return ""
    return _short(whole)


def _short(value: float) -> str:
    """Compact tick label: 1, 10, 100, 1K, 10K, 1M, 1B."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


# --- thumbnails for the Dagster UI -----------------------------------------------------------------


def chart_thumbnails_markdown(images: dict[str, bytes], max_width: int = 480, *, max_uri_bytes: int = THUMBNAIL_MAX_URI_BYTES) -> str:
    """Markdown showing each chart as a small inline PNG (`data:image/png;base64,...`), titled by file name.

    The Dagster UI has no image metadata type but renders Markdown images; a full-size chart would
    put hundreds of kB into every materialization, so each is scaled to at most `max_width` pixels
    (narrower if needed) so that its data URI stays under `max_uri_bytes`. Deterministic.
    """
    parts = []
    for name, data in images.items():
        uri = _thumbnail_uri(data, max_width, max_uri_bytes)
        parts.append(f"**{name}**\n\n![{name}]({uri})")
    return "\n\n".join(parts)


def _thumbnail_png(data: bytes, width: int) -> bytes:
    """`data` (a PNG) scaled down to at most `width` pixels wide, in a 256-colour palette (charts are flat colours)."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)
    # No dithering: it adds noise that compresses badly and changes nothing a reader can see at this size.
    image = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _thumbnail_uri(data: bytes, max_width: int, max_uri_bytes: int) -> str:
    width = max_width
    while True:
        uri = "data:image/png;base64," + base64.b64encode(_thumbnail_png(data, width)).decode("ascii")
        if len(uri) <= max_uri_bytes or width <= 64:
            return uri
        width = int(width * 0.8)  # a busier chart than usual: shrink until it fits
