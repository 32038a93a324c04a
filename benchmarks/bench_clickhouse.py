"""Benchmark the ClickPy bulk source against a full-scale synthetic ClickPy table over HTTP.

    python benchmarks/bench_clickhouse.py [--projects 930000] [--days 35] [--seed 0]

A server process loads ClickPy's table into ClickHouse's engine (chDB, on disk in a temporary
directory) with `iter_synthetic_downloads` (about 60% of the projects with downloads in the 30 days,
heavy-tailed counts, a few versions x installers x file types per project-day: about 32 million
rows for 930,000 projects over 35 days) and serves it with the fake's HTTP interface, as ClickPy
serves it from elsewhere. Each client step then runs in a fresh process, so its figures are its
own: wall time and CPU time of the call, the process's RSS before and its max RSS after (`getrusage`), the
peak of pyarrow's memory pool, and the tracemalloc peak (Python allocations only, measured in a
second call, as tracing slows the first); next to it the server's CPU time per call (the engine's
work, which ClickPy does on its own machines). The server reports the same for the load and its max
RSS after serving every query (the engine's own memory, not the client's). CPU times hold on a
busy machine; wall times do not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import resource
import time
import tracemalloc


def _rss_mib() -> float:
    """The process's current resident set size, MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def serve(conn, projects: int, days: int, seed: int, day: dt.date) -> None:
    """The server process: load the table, serve it until told to stop."""
    import pyarrow as pa

    from pypi_downloads_dagster_tests.fakes.clickhouse import (
        DEFAULT_TABLE,
        ChdbEngine,
        FakeClickHouse,
        create_downloads_table,
        iter_synthetic_downloads,
    )

    rss_before = _rss_mib()
    tracemalloc.start()
    started = time.perf_counter()
    generating = 0.0
    rows = 0
    with ChdbEngine() as engine:
        create_downloads_table(engine)
        batches = iter_synthetic_downloads(day, projects=projects, days=days, seed=seed)
        while True:
            mark = time.perf_counter()
            batch = next(batches, None)
            generating += time.perf_counter() - mark
            if batch is None:
                break
            engine.insert_arrow(DEFAULT_TABLE, batch)
            rows += batch.num_rows
            del batch
        load_seconds = time.perf_counter() - started
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        database, table = DEFAULT_TABLE.split(".")
        parts, on_disk = engine.query(
            f"SELECT count(), sum(bytes_on_disk) FROM system.parts WHERE active AND database = '{database}' AND table = '{table}'"
        ).decode().split()
        with FakeClickHouse(engine) as fake:
            conn.send(
                {
                    "url": fake.url,
                    "rows": rows,
                    "load_seconds": load_seconds,
                    "generate_seconds": generating,
                    "traced_peak_mib": traced_peak / 2**20,
                    "rss_before_mib": rss_before,
                    "max_rss_mib": _max_rss_mib(),
                    "arrow_pool_peak_mib": pa.default_memory_pool().max_memory() / 2**20,
                    "parts": int(parts),
                    "on_disk_mib": int(on_disk) / 2**20,
                    "chdb": engine.version,
                }
            )
            while conn.recv() == "cpu":  # until "stop"
                conn.send(_cpu_seconds())
            conn.send({"max_rss_mib": _max_rss_mib()})


def client_step(conn, url: str, step: str, day: dt.date) -> None:
    """One client call in a fresh process: its time and memory."""
    import pyarrow as pa

    from pypi_downloads_dagster.services.clickhouse import ClickHouseClient, daily_history, daily_totals, recent_counts

    steps = {
        "recent_counts": lambda c: recent_counts(c, day),
        "recent_counts parts=4": lambda c: recent_counts(c, day, parts=4),
        "daily_history 1 day": lambda c: daily_history(c, day, day),
        "daily_totals 35 days": lambda c: daily_totals(c, day - dt.timedelta(days=34), day),
    }
    call = steps[step]
    with ClickHouseClient(url) as client:
        rss_before = _rss_mib()
        started, cpu = time.perf_counter(), _cpu_seconds()
        result = call(client)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        max_rss = _max_rss_mib()
        frame_mib = result.memory_usage(deep=True).sum() / 2**20
        rows = len(result)
        del result
        pool_peak = pa.default_memory_pool().max_memory() / 2**20
        tracemalloc.start()
        call(client)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    conn.send(
        {
            "step": step,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "rows": rows,
            "frame_mib": frame_mib,
            "rss_before_mib": rss_before,
            "max_rss_mib": max_rss,
            "arrow_pool_peak_mib": pool_peak,
            "traced_peak_mib": traced_peak / 2**20,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--projects", type=int, default=930_000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    day = dt.date(2026, 3, 31)
    spawn = multiprocessing.get_context("spawn")

    server_end, here = spawn.Pipe()
    server = spawn.Process(target=serve, args=(server_end, args.projects, args.days, args.seed, day), daemon=True)
    server.start()
    load = here.recv()
    print(f"chDB {load['chdb']}: {args.projects:,} projects, {args.days} days, {load['rows']:,} rows "
          f"in {load['parts']} parts, {load['on_disk_mib']:.0f} MiB on disk", flush=True)
    print(f"{'step':<24} {'seconds':>8} {'rows':>10} {'frame MiB':>10} {'RSS before':>11} {'max RSS':>9} "
          f"{'arrow peak':>11} {'traced peak':>12}   (MiB)", flush=True)
    print(f"{'load (server)':<24} {load['load_seconds']:8.1f} {load['rows']:10,} {'':>10} {load['rss_before_mib']:11.0f} "
          f"{load['max_rss_mib']:9.0f} {load['arrow_pool_peak_mib']:11.0f} {load['traced_peak_mib']:12.0f}"
          f"   (generating rows: {load['generate_seconds']:.1f} s of it)", flush=True)

    for step in ("recent_counts", "recent_counts parts=4", "daily_history 1 day", "daily_totals 35 days"):
        step_end, answer = spawn.Pipe()
        here.send("cpu")
        server_cpu = here.recv()
        worker = spawn.Process(target=client_step, args=(step_end, load["url"], step, day))
        worker.start()
        figures = answer.recv()
        worker.join()
        here.send("cpu")
        server_cpu = (here.recv() - server_cpu) / 2  # the step ran twice (timed, then traced)
        print(f"{step:<24} {figures['seconds']:8.2f} {figures['rows']:10,} {figures['frame_mib']:10.1f} "
              f"{figures['rss_before_mib']:11.0f} {figures['max_rss_mib']:9.0f} {figures['arrow_pool_peak_mib']:11.0f} "
              f"{figures['traced_peak_mib']:12.1f}   CPU s: client {figures['cpu_seconds']:.2f}, server {server_cpu:.2f}",
              flush=True)

    here.send("stop")
    print(f"server max RSS after serving every query: {here.recv()['max_rss_mib']:.0f} MiB", flush=True)
    server.join(timeout=30)


if __name__ == "__main__":
    main()
