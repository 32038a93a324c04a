"""Leases in the Dagster instance's database, on SQLite and on a real PostgreSQL server: at most one
holder at a time across processes, expiry of a dead holder, and egress leases that let processes
share a proxy pool at full pace without a shared file."""

import subprocess
import sys
import time

import dagster as dg

from pypi_downloads_dagster.orchestration.leases import EgressLeases, Keeper, LeaseTable, chunk_lease
from pypi_downloads_dagster_tests.fakes.proxy import FakeProxy
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats
from pypi_downloads_dagster_tests.test_http import SCALED, counts


def test_one_holder_at_a_time_and_a_dead_holders_lease_expires(instance_env):
    home, _ = instance_env
    now = [1_000.0]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        table = LeaseTable.of_instance(instance, clock=lambda: now[0])
        assert table.take("chunk:K", "run A", ttl=10)
        assert not table.take("chunk:K", "run B", ttl=10)
        assert table.take("chunk:K", "run A", ttl=10)  # taking again is renewing
        assert table.holders("chunk:") == {"chunk:K": "run A"}
        assert table.holders("egress:") == {}
        now[0] += 9
        assert table.renew(["chunk:K"], "run A", ttl=10) == []
        now[0] += 9.5
        assert not table.take("chunk:K", "run B", ttl=10)  # renewed: still A's
        now[0] += 1  # A died 10.5 s ago and stopped renewing
        assert table.holders("chunk:") == {}
        assert table.take("chunk:K", "run B", ttl=10)
        assert table.renew(["chunk:K"], "run A", ttl=10) == ["chunk:K"]  # A learns it lost it
        table.release(["chunk:K"], "run A")  # not A's any more: left alone
        assert table.holders("chunk:") == {"chunk:K": "run B"}
        table.release(["chunk:K"], "run B")
        assert table.take("chunk:K", "run C", ttl=10)
        # A released egress rests: nobody takes it before its pacing allows the next request.
        assert table.take("egress:p1", "run C", ttl=10)
        table.release(["egress:p1"], "run C", rest={"egress:p1": 0.5})
        assert not table.take("egress:p1", "run D", ttl=10)
        now[0] += 0.6
        assert table.take("egress:p1", "run D", ttl=10)
        # Names with LIKE's wildcards are matched literally.
        assert table.take("chunk:a_b%", "run E", ttl=10)
        assert set(table.holders("chunk:a_b%")) == {"chunk:a_b%"}


_CONTEND = """
import os, sys, time
import dagster as dg
from pypi_downloads_dagster.orchestration.leases import LeaseTable
home, log, start_at, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
me = f"pid {os.getpid()}"
with dg.DagsterInstance.from_config(home) as instance:
    table = LeaseTable.of_instance(instance)
    table.holders("x")  # create the table before the race
    time.sleep(max(0.0, start_at - time.time()))
    taken = 0
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    while time.time() < start_at + seconds:
        if table.take("chunk:contended", me, ttl=30):
            taken += 1
            os.write(fd, f"in {me}\\n".encode())
            time.sleep(0.003)
            os.write(fd, f"out {me}\\n".encode())
            table.release(["chunk:contended"], me)
print(taken)
"""


def _initialize(home) -> None:
    """Create the instance's tables once: processes all creating a fresh instance at once race in
    Dagster's own migrations (a deployment's instance exists before its runs)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        LeaseTable.of_instance(instance).holders("")


def test_processes_racing_for_one_lease_never_hold_it_together(instance_env, tmp_path):
    home, env = instance_env
    _initialize(home)
    log = tmp_path / "holders.log"
    start_at = time.time() + 6  # interpreters importing dagster start at different speeds
    processes = [
        subprocess.Popen([sys.executable, "-c", _CONTEND, str(home), str(log), str(start_at), "2"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    taken = [int(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in processes]
    lines = log.read_text().splitlines()
    assert sum(taken) >= 10 and len(lines) == 2 * sum(taken)
    for enter, leave in zip(lines[::2], lines[1::2]):  # strictly: one in, the same one out
        assert enter.startswith("in ") and leave == "out " + enter[3:]
    assert sum(1 for t in taken if t) >= 2  # more than one process got its turn


_FETCH_WITH_LEASES = """
import os, sys, time
import dagster as dg
from pypi_downloads_dagster.services.http import HttpClient, Pacing, RetryPolicy, parse_proxy_pool
from pypi_downloads_dagster.orchestration.leases import EgressLeases, Keeper, LeaseTable
from pypi_downloads_dagster.services.pypistats import fetch_many
home, api_url, proxies, start_at, *names = sys.argv[1:]
pool = parse_proxy_pool(proxies)
with dg.DagsterInstance.from_config(home) as instance:
    keeper = Keeper(LeaseTable.of_instance(instance), f"pid {os.getpid()}", ttl=10)
    time.sleep(max(0.0, float(start_at) - time.time()))
    leases = EgressLeases(keeper, [e.label for e in pool], poll=0.05)
    # Retries as in production (a busy CI machine can delay an answer past a short timeout).
    client = HttpClient(pool, pacing=Pacing(max_per_second=20, max_per_minute=900), retry=RetryPolicy(attempts=4, timeout=10, rate_limited_wait=0.25), gate=leases)
    leases.resting = client.resting
    result = fetch_many(client, api_url, names)
    leases.close()
    keeper.close()
print(dict(list(result.failed.items())[:3]), file=sys.stderr)
print(len(result.failed))
"""


def test_processes_leasing_egresses_keep_every_proxy_within_its_limit_at_full_pace(instance_env):
    """Issue 7: pacing across processes (and machines) without a shared file. Two processes start
    together on one pool of two proxies; the leases give each egress to one process at a time, the
    released egress rests out its pacing interval, and together they keep the pool busy."""
    home, env = instance_env
    _initialize(home)
    names = [f"pkg-{i}" for i in range(60)]
    with FakePypistats(counts(60), **SCALED) as stats, FakeProxy("127.0.0.2") as one, FakeProxy("127.0.0.3") as two:
        proxies = f"{one.url},{two.url}"
        start_at = str(time.time() + 6)
        processes = [
            subprocess.Popen([sys.executable, "-c", _FETCH_WITH_LEASES, str(home), stats.api_url, proxies, start_at, *part], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for part in (names[:30], names[30:])
        ]
        outputs = [p.communicate(timeout=120) for p in processes]
        assert all(out.strip() for out, _ in outputs), [err[-2000:] for _, err in outputs]
        failed = [int(out.strip().splitlines()[-1]) for out, _ in outputs]
        log = list(stats.log)
    assert failed == [0, 0], [err[-2000:] for _, err in outputs]
    assert [r.status for r in log].count(429) == 0
    for ip in ("127.0.0.2", "127.0.0.3"):
        assert stats.max_requests_in_window(ip, 0.25) <= 5
    # Throughput over the whole exchange: two egresses at their pacing, less the hand-over.
    times = sorted(r.time for r in log)
    interval = 1 / 900 * 60 / 0.97  # the scaled pacing: 900 per minute, 97% of it
    ideal = (len(names) / 2 - 1) * interval
    print(f"60 requests over 2 egresses in {times[-1] - times[0]:.2f}s; ideal {ideal:.2f}s")
    assert times[-1] - times[0] <= ideal / 0.8


def test_an_egress_lease_is_taken_by_the_next_run_within_a_poll_and_a_lost_one_is_reported(instance_env):
    home, _ = instance_env
    with dg.DagsterInstance.from_config(str(home)) as instance:
        table = LeaseTable.of_instance(instance)
        lost = []
        first = Keeper(table, "run A", ttl=30, on_lost=lost.extend)
        second = Keeper(table, "run B", ttl=30)
        a = EgressLeases(first, ["p1", "p2"], poll=0.05)
        b = EgressLeases(second, ["p1", "p2"], poll=0.05)
        assert a.held() == {"p1", "p2"} and b.held() == frozenset()
        assert b.holders() == {"p1": "run A", "p2": "run A"}
        a.close()
        deadline = time.monotonic() + 5
        while b.held() != {"p1", "p2"} and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.held() == {"p1", "p2"}
        b.close()
        # A lease renewed too late (a stalled process) is reported, not silently kept.
        assert first.take(chunk_lease("K"))
        table.release([chunk_lease("K")], "run A")
        assert second.take(chunk_lease("K"))
        lost_now = table.renew([chunk_lease("K")], "run A", ttl=30)
        assert lost_now == [chunk_lease("K")]
        first.close()
        second.close()
        assert table.holders("") == {}
