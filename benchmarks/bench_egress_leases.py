"""Throughput of several processes sharing a proxy pool through egress leases in a Dagster instance.

    python benchmarks/bench_egress_leases.py [--proxies 4] [--processes 3] [--seconds 30] [--postgres]

Starts the local pypistats fake with pypistats' limits scaled in time (5 per 0.25 s and 30 per 2 s
per client IP, so pacing is 20/s and 900/min per egress), K local proxies (each its own source
address, so its own limit) and N processes that each fetch a share of the packages through
`EgressLeases` on one instance (SQLite, or a fresh PostgreSQL cluster with --postgres), as chunk runs
do. Prints requests per second against K x the per-egress pacing, and the share refused (429).
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402

from pypi_downloads_dagster.services.http import Pacing  # noqa: E402
from pypi_downloads_dagster.orchestration.leases import LeaseTable  # noqa: E402
from pypi_downloads_dagster_tests.conftest import write_instance  # noqa: E402
from pypi_downloads_dagster_tests.fakes.proxy import FakeProxy  # noqa: E402
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats  # noqa: E402
from pypi_downloads_dagster_tests.test_leases import _FETCH_WITH_LEASES  # noqa: E402

PACING = Pacing(max_per_second=20, max_per_minute=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", type=int, default=4)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30, help="about how long the fetch should take at full pace")
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()

    per_egress = 1 / PACING.interval
    total = int(args.seconds * per_egress * args.proxies)
    names = [f"pkg-{i}" for i in range(total)]
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "home"
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        if args.postgres:
            from pypi_downloads_dagster_tests.postgres import postgres_server

            env.update(stack.enter_context(postgres_server()))
            env["PYPI_DOWNLOADS_SHARED_DIR"] = str(home.parent / "shared")
        write_instance(home, "postgres" if args.postgres else "sqlite")
        os.environ.update(env)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            LeaseTable.of_instance(instance).holders("")
        stats = stack.enter_context(
            FakePypistats({n: (1, 2, 3) for n in names}, per_second=5, per_minute=30, second_window=0.25, minute_window=2.0)
        )
        proxies = [stack.enter_context(FakeProxy(f"127.0.0.{2 + i}")) for i in range(args.proxies)]
        pool = ",".join(p.url for p in proxies)
        start_at = str(time.time() + 8)
        shares = [names[i :: args.processes] for i in range(args.processes)]
        processes = [
            subprocess.Popen([sys.executable, "-c", _FETCH_WITH_LEASES, str(home), stats.api_url, pool, start_at, *share], env=env, stdout=subprocess.PIPE, text=True)
            for share in shares
        ]
        failed = [int(p.communicate(timeout=args.seconds * 10 + 120)[0].strip().splitlines()[-1]) for p in processes]
        log = list(stats.log)
    answered = [r for r in log if r.status == 200]
    times = sorted(r.time for r in answered)
    elapsed = times[-1] - times[0]
    rate = (len(answered) - 1) / elapsed
    ideal = args.proxies * per_egress
    refused = sum(r.status == 429 for r in log)
    print(f"{args.processes} processes, {args.proxies} egresses, {'PostgreSQL' if args.postgres else 'SQLite'} instance")
    print(f"{len(answered)} answered in {elapsed:.1f}s: {rate:.2f}/s of {ideal:.2f}/s (K x pacing) = {100 * rate / ideal:.1f}%")
    print(f"refused (429): {refused} of {len(log)} = {100 * refused / max(1, len(log)):.2f}%; failed after retries: {sum(failed)}")


if __name__ == "__main__":
    main()
