"""Benchmark the plain functions of one cycle at PyPI scale (900,000 projects) on this machine.

    python benchmarks/bench_pipeline.py [--projects 900000]

Prints wall time and peak Python memory (tracemalloc, in a second call) for: parsing the PEP 691 JSON index and the
PEP 503 HTML index, reading the existing dataset (old float CSV and Parquet), planning, merging 50
fetched chunks, preparing a publication (guards and checks), writing the Parquet file, and reading and clearing a fetch store of every chunk.
"""

import argparse
import json
import tempfile
import time
import tracemalloc

import numpy as np
import pandas as pd

from pypi_downloads_dagster.dataset.frames import merge_dataset, newest_fetches, plan_stale
from pypi_downloads_dagster.dataset.store import FetchStore
from pypi_downloads_dagster.dataset.guards import PublishGuards
from pypi_downloads_dagster.publishing.hub import ExistingDataset
from pypi_downloads_dagster.publishing.publish import prepare_publication
from pypi_downloads_dagster.services.pypi_index import build_project_index, parse_index_html, parse_index_json
from pypi_downloads_dagster.dataset.schema import DATASET_FILE, dataset_to_parquet, normalize_name, read_dataset_file


def measure(label, fn, *, repeatable=True):
    """Time one call, then repeat it under tracemalloc for its peak memory (tracing slows it down,
    so the two are measured apart). A call that changes what it works on is measured once."""
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    if not repeatable:
        print(f"{label:<44} {seconds:8.2f} s", flush=True)
        return result
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{label:<44} {seconds:8.2f} s   peak {peak / 2**20:8.1f} MiB", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--projects", type=int, default=900_000)
    args = parser.parse_args()
    n = args.projects
    rng = np.random.default_rng(0)
    names = [f"Pkg_{i}.x" if i % 7 == 0 else f"pkg-{i}" for i in range(n)]
    normalized = [normalize_name(name) for name in names]
    json_body = json.dumps(
        {"meta": {"_last-serial": 1, "api-version": "1.4"}, "projects": [{"_last-serial": 1, "name": x} for x in names]},
        separators=(",", ":"),
    ).encode()
    html_body = (
        "<!DOCTYPE html>\n<html><head><title>Simple index</title></head><body>\n"
        + "".join(f'    <a href="/simple/{m}/">{x}</a>\n' for x, m in zip(names, normalized))
        + "</body></html>\n"
    ).encode()
    print(f"{n:,} projects; JSON index {len(json_body) / 2**20:.0f} MiB, HTML index {len(html_body) / 2**20:.0f} MiB")

    parsed, _ = measure("parse PEP 691 JSON index", lambda: parse_index_json(json_body))
    measure("parse PEP 503 HTML index (pyquery)", lambda: parse_index_html(html_body))
    projects = measure("validate + normalize index", lambda: build_project_index(parsed, fmt="json")).projects

    now = time.time()  # fetch times must not be ahead of the clock (they would be set aside)
    month = rng.pareto(1.2, n) * 10
    known = rng.random(n) < 0.9
    old = pd.DataFrame(
        {
            "name": names,
            "url": "https://pypi.org/simple/" + pd.Series(normalized) + "/",
            "last_day": np.where(known, np.floor(month / 30), np.nan),
            "last_week": np.where(known, np.floor(month / 4), np.nan),
            "last_month": np.where(known, np.floor(month), np.nan),
            "updated_at": np.where(rng.random(n) < 0.95, now - rng.random(n) * 60 * 86400, np.nan),
        }
    )
    csv = old.to_csv(index=False).encode()
    existing = measure("read old float CSV + migrate", lambda: read_dataset_file(csv, "dataset.csv"))
    parquet = measure("write Parquet", lambda: dataset_to_parquet(existing))
    print(f"{'':<44} Parquet {len(parquet) / 2**20:.1f} MiB, CSV {len(csv) / 2**20:.1f} MiB")
    existing = measure("read Parquet", lambda: read_dataset_file(parquet, "dataset.parquet"))
    plan = measure("plan stale (chunks of 1000)", lambda: plan_stale(projects, existing, now=now, plan_id="P", chunk_size=1000))
    print(f"{'':<44} {len(plan):,} stale in {plan['chunk'].nunique():,} chunks")
    chunks = []
    for _, group in list(plan.groupby("chunk"))[:50]:
        chunks.append(
            pd.DataFrame(
                {
                    "normalized": group["normalized"].to_numpy(),
                    "last_day": pd.array(np.ones(len(group), dtype=np.int64), dtype="Int64"),
                    "last_week": pd.array(np.ones(len(group), dtype=np.int64) * 7, dtype="Int64"),
                    "last_month": pd.array(np.ones(len(group), dtype=np.int64) * 30, dtype="Int64"),
                    "status": "valid",
                    "updated_at": now,
                }
            )
        )
    merged, stats = measure("merge 50 fetched chunks", lambda: merge_dataset(existing, projects, newest_fetches(chunks)))
    print(f"{'':<44} {stats}")
    # What a publish adds on top of the merge: guard figures, integrity checks, the high-water mark.
    snapshot = ExistingDataset(existing, "rev", DATASET_FILE)
    publication = measure(
        "prepare publication (merge, guards, checks)",
        lambda: prepare_publication(snapshot, projects, newest_fetches(chunks), PublishGuards()),
    )
    print(f"{'':<44} refusal: {publication.refusal or 'none'}")

    # The fetch store at its largest: every planned chunk fetched and not yet published.
    with tempfile.TemporaryDirectory() as folder:
        store = FetchStore(folder)
        template = chunks[0]
        for number in range(len(plan) // 1000):
            store.write(f"P-{number:05d}", template.assign(normalized=plan["normalized"].iloc[number * 1000 : (number + 1) * 1000].to_numpy()))
        pending = measure(f"fetch store: read {len(store.keys())} chunks", lambda: newest_fetches(store.read_all().values()))
        merged, _ = merge_dataset(existing, projects, pending)
        removed = measure(
            "fetch store: clear published chunks",
            lambda: store.remove_published(merged, projects["normalized"], keep_fetched_since=now + 1),
            repeatable=False,
        )
        print(f"{'':<44} {len(removed)} chunk files removed")


if __name__ == "__main__":
    main()
