"""The whole bulk cycle (COUNTS_SOURCE=clickhouse) at PyPI scale, through Dagster, on this machine.

    python benchmarks/bench_bulk_cycle.py [--projects 930000] [--days 35] [--sample 50]

A server process loads ClickPy's table into ClickHouse's engine (chDB) with the synthetic rows of
`benchmarks/bench_clickhouse.py` (about 60% of the projects with downloads in the 30 days, heavy
tailed, about 32 million rows at 930,000 projects) and serves ClickHouse's HTTP interface, as ClickPy
serves it from elsewhere. This process then runs what `sync` runs, as Dagster runs in a temporary
instance: `publish_history` for D, then `bulk_refresh` (index, one counts query, the join, the store,
the cross-check, merge, guards, checks, charts, card, one commit to a local folder). The index is the
local fake serving the same 930,000 names (PEP 691 JSON) from a third process; pypistats is the local fake, paced 100x
faster than the real limits so the 50-project cross-check does not dominate (at the real 30 a minute
it adds about 100 s per egress, and runs beside nothing else).

Prints the wall time of each run and of each stage `bulk_counts` reports, and this process's peak
RSS (the engine's memory is the server's, ClickPy's in production).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """RSS of this process every 50 ms, to tell which step holds the peak."""

    def __init__(self):
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            self.samples.append((time.time(), _rss_mib()))

    def peak(self, start: float, end: float) -> float:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0.0)

    def stop(self):
        self._stop.set()
        self._thread.join()


def serve_web(conn, projects: int) -> None:
    """The index and pypistats fakes, in their own process: their memory is not the cycle's."""
    from pypi_downloads_dagster.dataset.schema import normalize_name
    from pypi_downloads_dagster_tests.fakes.clickhouse import project_names
    from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
    from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

    names = list({normalize_name(n): n for n in project_names(projects)}.values())
    sampled = {normalize_name(n): (1, 1, 1) for n in names[:: max(1, len(names) // 1000)]}
    with FakeIndex(names) as index, FakePypistats(sampled, per_second=500, per_minute=3000) as stats:
        conn.send({"index": index.index_url, "stats": stats.api_url})
        conn.recv()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=930_000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--sample", type=int, default=50)
    args = parser.parse_args()

    from bench_clickhouse import serve

    from pypi_downloads_dagster.services.clickhouse import last_complete_day

    day = last_complete_day(time.time())
    spawn = multiprocessing.get_context("spawn")
    server_end, here = spawn.Pipe()
    server = spawn.Process(target=serve, args=(server_end, args.projects, args.days, 0, day), daemon=True)
    server.start()
    load = here.recv()
    print(f"engine: {load['rows']:,} rows for {args.projects:,} projects over {args.days} days, loaded in {load['load_seconds']:.0f}s", flush=True)

    import dagster as dg

    web_end, web = spawn.Pipe()
    web_process = spawn.Process(target=serve_web, args=(web_end, args.projects), daemon=True)
    web_process.start()
    urls = web.recv()
    with tempfile.TemporaryDirectory() as folder:
        env = {
            "COUNTS_SOURCE": "clickhouse",
            "CLICKHOUSE_URL": load["url"],
            "CROSS_CHECK_SAMPLE": str(args.sample),
            "PYPI_INDEX_URL": urls["index"],
            "PYPISTATS_API_URL": urls["stats"],
            "PYPISTATS_MAX_PER_SECOND": "500",
            "PYPISTATS_MAX_PER_MINUTE": "3000",
            "PYPI_DOWNLOADS_DIR": str(Path(folder) / "repo"),
        }
        os.environ.update(env)
        from pypi_downloads_dagster.definitions import build_definitions

        defs = build_definitions(env)
        (Path(folder) / "home").mkdir()
        with dg.instance_for_test(temp_dir=str(Path(folder) / "home")) as instance:
            started = time.perf_counter()
            history = defs.resolve_job_def("publish_history").execute_in_process(instance=instance, partition_key=str(day))
            history_seconds = time.perf_counter() - started
            mark = time.perf_counter()
            sampler = RssSampler()
            bulk = defs.resolve_job_def("bulk_refresh").execute_in_process(instance=instance)
            sampler.stop()
            bulk_seconds = time.perf_counter() - mark
            total = time.perf_counter() - started
            assert history.success and bulk.success
            steps, starts = {}, {}
            for entry in instance.all_logs(bulk.run_id):
                event = entry.dagster_event
                if event is not None and event.is_step_start:
                    starts[event.step_key] = entry.timestamp
                if event is not None and event.is_step_success:
                    seconds = event.event_specific_data.duration_ms / 1000
                    steps[event.step_key] = f"{seconds:.1f}s, peak RSS {sampler.peak(starts[event.step_key], entry.timestamp):.0f} MiB"
            meta = bulk.asset_materializations_for_node("bulk_counts")[0].metadata
        files = sorted(p.name for p in (Path(folder) / "repo").rglob("*") if p.is_file())
    print(f"history of {day} (one query, one commit): {history_seconds:.1f}s")
    print(f"bulk_refresh: {bulk_seconds:.1f}s; steps: " + "; ".join(f"{k} {v}" for k, v in steps.items()))
    print("  bulk_counts stages: " + ", ".join(f"{k[len('seconds: '):]} {v.value:.1f}s" for k, v in meta.items() if k.startswith("seconds: ")))
    print(f"  {meta['projects'].value:,} projects, {meta['valid'].value:,} with downloads; cross-check: {meta['cross_check'].value}")
    print(f"whole cycle: {total:.1f}s; peak RSS of this process {_max_rss_mib():.0f} MiB; published {len(files)} files")
    web.send("stop")
    here.send("stop")
    here.recv()
    server.join(timeout=30)


if __name__ == "__main__":
    main()
