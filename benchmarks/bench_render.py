"""Time and peak memory of rendering the charts and the dataset card for a full-size dataset.

    /work/venv/bin/python benchmarks/bench_render.py [--rows 900000] [--out DIR]

Builds a synthetic dataset shaped like the real one: heavy-tailed (log-normal) monthly counts with
week/day as fractions of them, ~40% 'valid', ~15% 'empty', the rest never fetched. `--out` also
writes the rendered PNGs and README.md there so they can be looked at.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import time
import tracemalloc

import numpy as np
import pandas as pd

from pypi_downloads_dagster.publishing.card import render_dataset_card
from pypi_downloads_dagster.publishing.charts import render_charts
from pypi_downloads_dagster.dataset.schema import conform, normalize_names

NOW = 1_750_000_000.0  # fixed "now" so runs are comparable


def synthetic_dataset(rows: int, seed: int = 0) -> pd.DataFrame:
    """A conformed dataset of `rows` rows, sorted by name."""
    rng = np.random.default_rng(seed)
    names = pd.Series([f"{'Pkg' if i % 7 == 0 else 'pkg'}-{i:07d}" for i in range(rows)])
    kind = rng.choice(["valid", "empty", "never"], size=rows, p=[0.40, 0.15, 0.45])
    valid = kind == "valid"
    # Log-normal, median ~55/month, the largest of ~360k a few 10^7: a long tail with a few giants.
    month = np.floor(rng.lognormal(4.0, 2.8, rows))
    week = np.floor(month * rng.uniform(0.15, 0.35, rows))
    day = np.floor(week * rng.uniform(0.1, 0.2, rows))
    updated = NOW - rng.uniform(0, 60 * 86400, rows)
    frame = pd.DataFrame(
        {
            "name": names,
            "url": "https://pypi.org/simple/" + normalize_names(names) + "/",
            "last_day": pd.array(np.where(valid, day, np.nan), dtype="Float64").astype("Int64"),
            "last_week": pd.array(np.where(valid, week, np.nan), dtype="Float64").astype("Int64"),
            "last_month": pd.array(np.where(valid, month, np.nan), dtype="Float64").astype("Int64"),
            "status": pd.Series(np.where(kind == "never", None, kind), dtype=object),
            "updated_at": np.where(kind == "never", np.nan, updated),
        }
    )
    return conform(frame)


def measure(label: str, func, *args, repeat: int = 3, **kwargs):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = func(*args, **kwargs)
        times.append(time.perf_counter() - start)
    # A separate traced run: tracemalloc slows allocation, so it must not be in the timings.
    tracemalloc.start()
    func(*args, **kwargs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{label:<22} best {min(times):6.2f} s  median {sorted(times)[len(times) // 2]:6.2f} s  "
          f"traced peak {peak / 2**20:7.1f} MiB  process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:7.1f} MiB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=900_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, help="directory to write the PNGs and README.md to")
    args = parser.parse_args()

    start = time.perf_counter()
    frame = synthetic_dataset(args.rows)
    print(f"synthetic dataset: {len(frame):,} rows, {int((frame['status'] == 'valid').sum()):,} valid, "
          f"built in {time.perf_counter() - start:.1f} s; max RSS so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
    charts = measure("render_charts", render_charts, frame, repeat=args.repeat)
    card = measure("render_dataset_card", render_dataset_card, frame, repeat=args.repeat, repo_id="example/pypi-downloads")
    print(", ".join(f"{name} {len(data):,} bytes" for name, data in charts.items()) + f", README.md {len(card):,} chars")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, data in charts.items():
            (args.out / name).write_bytes(data)
        (args.out / "README.md").write_text(card)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
