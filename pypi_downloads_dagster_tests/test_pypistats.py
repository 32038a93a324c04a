"""What the pypistats client records, against the local pypistats fake (and proxies): only pypistats'
own answers become rows; anything else fails and leaves the row as it was."""

import math
import signal
import threading
import time

import pytest

from pypi_downloads_dagster.services.http import HttpClient, HttpError, Pacing, RetryPolicy, ServiceDown, parse_proxy_pool
from pypi_downloads_dagster.services.pypistats import (
    BrokenClock,
    FetchProgress,
    FetchStopped,
    UnexpectedAnswer,
    WrongStatsEndpoint,
    check_canary,
    fetch_many,
    fetch_recent,
    parse_recent,
)
from pypi_downloads_dagster.dataset.schema import EARLIEST_UPDATED_AT, MAX_COUNT
from pypi_downloads_dagster_tests.fakes.proxy import FakeProxy
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

RETRY = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, timeout=5, rate_limited_wait=0.05)
COUNTS = {"requests": (100, 700, 3000), "pkg-0": (1, 7, 30), "pkg-1": (2, 14, 60), "pkg-2": (3, 21, 90)}
PROXY_404_PAGE = "<html><head><title>404 Not Found</title></head><body><center>nginx</center></body></html>"


@pytest.fixture
def stats():
    with FakePypistats(COUNTS, per_second=1000, per_minute=10_000) as server:
        yield server


def test_only_pypistats_own_404_is_empty_a_foreign_404_fails(stats):
    stats.foreign_404("pkg-1", times=RETRY.attempts)
    result = fetch_many(HttpClient(retry=RETRY), stats.api_url, ["pkg-0", "pkg-1", "no-such-project"])
    rows = result.fetched.set_index("normalized")
    assert rows.loc["no-such-project", "status"] == "empty"  # pypistats' bare `404`
    assert "pkg-1" not in rows.index  # its row stays as it was
    assert set(result.failed) == {"pkg-1"}
    assert "HTTP 404" in result.failed["pkg-1"] and "not pypistats' unknown-package answer" in result.failed["pkg-1"]
    assert len(stats.requests_for("pkg-1")) == RETRY.attempts


def test_a_foreign_404_once_is_retried(stats):
    stats.foreign_404("pkg-2")
    counts = fetch_recent(HttpClient(retry=RETRY), stats.api_url, "pkg-2")
    assert (counts.status, counts.last_month) == ("valid", 90)
    assert [r.status for r in stats.requests_for("pkg-2")] == [404, 200]


def test_a_proxys_404_page_never_makes_a_project_empty(stats):
    with FakeProxy("127.0.0.2") as broken, FakeProxy("127.0.0.3") as good:
        broken.override = (404, "text/html", PROXY_404_PAGE)
        client = HttpClient(parse_proxy_pool(f"{broken.url},{good.url}"), retry=RETRY)
        result = fetch_many(client, stats.api_url, ["pkg-0", "pkg-1", "pkg-2"])
        assert broken.requests  # it was asked, and its answers were not taken
    assert result.failed == {} and result.valid == 3 and result.empty == 0
    assert stats.client_ips() == {"127.0.0.3"}


def test_check_canary_returns_the_counts_of_a_known_project(stats):
    counts = check_canary(HttpClient(retry=RETRY), stats.api_url, "requests")
    assert (counts.normalized, counts.status, counts.last_day) == ("requests", "valid", 100)


@pytest.mark.parametrize("case", ["unknown-name", "wrong-api-path", "proxy-404-page"])
def test_check_canary_raises_wrong_stats_endpoint(stats, case):
    with FakeProxy("127.0.0.2", "alice", "s3cret") as proxy:
        client = HttpClient(parse_proxy_pool(proxy.proxy_url), retry=RETRY)
        api_url, name = stats.api_url, "requests"
        if case == "unknown-name":
            name = "not-on-pypistats"
        elif case == "wrong-api-path":
            api_url = f"{stats.url}/v2/api"  # pypistats answers its bare `404` for any unknown route
        else:
            proxy.override = (404, "text/html", PROXY_404_PAGE)
        with pytest.raises(WrongStatsEndpoint) as error:
            check_canary(client, api_url, name)
    assert str(error.value) == f"the stats API does not know {name}: check PYPISTATS_API_URL and the proxies"
    assert "s3cret" not in str(error.value) and "alice" not in str(error.value)


def test_check_canary_lets_other_failures_through(stats):
    stats.fail("requests", [503] * RETRY.attempts)
    with pytest.raises(HttpError) as error:
        check_canary(HttpClient(retry=RETRY), stats.api_url, "requests")
    assert not isinstance(error.value, WrongStatsEndpoint) and error.value.status == 503


def test_counts_beyond_int64_are_refused(stats):
    assert parse_recent(b'{"data": {"last_day": 0, "last_week": 1, "last_month": %d}}' % MAX_COUNT, "x") == (0, 1, MAX_COUNT)
    with pytest.raises(UnexpectedAnswer, match="int64"):
        parse_recent(b'{"data": {"last_day": 0, "last_week": 1, "last_month": %d}}' % (MAX_COUNT + 1), "x")
    stats.counts["huge"] = (1, 2, 2**64)
    result = fetch_many(HttpClient(retry=RETRY), stats.api_url, ["huge", "pkg-0"])
    assert result.fetched["normalized"].tolist() == ["pkg-0"]
    assert "int64" in result.failed["huge"]


@pytest.mark.parametrize("broken_time", [0.0, EARLIEST_UPDATED_AT - 1, math.nan])
def test_a_clock_before_pypistats_existed_records_nothing(stats, broken_time):
    client = HttpClient(retry=RETRY)
    with pytest.raises(BrokenClock, match="fix the system clock"):
        fetch_recent(client, stats.api_url, "pkg-0", clock=lambda: broken_time)
    asked = len(stats.log)
    recorded = []
    with pytest.raises(BrokenClock):
        fetch_many(client, stats.api_url, ["pkg-0", "pkg-1"], on_result=recorded.append, clock=lambda: broken_time)
    assert recorded == [] and len(stats.log) == asked  # refused before spending any request
    assert fetch_recent(client, stats.api_url, "pkg-0", clock=lambda: EARLIEST_UPDATED_AT).updated_at == EARLIEST_UPDATED_AT


def test_an_answer_the_journal_refuses_is_a_failure_not_a_row(stats):
    def refuse(counts):
        raise ValueError("disk full")

    result = fetch_many(HttpClient(retry=RETRY), stats.api_url, ["pkg-0"], on_result=refuse)
    assert result.fetched.empty and result.failed == {"pkg-0": "not recorded: ValueError: disk full"}


# Slow enough that 200 packages would take 20 s: a stop must not wait for them.
SLOW_PACING = Pacing(max_per_second=10, max_per_minute=6000)
MANY = {f"pkg-{i}": (i, 7 * i, 30 * i) for i in range(200)}


def _pypistats_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pypistats-") and t.is_alive()]


def test_stop_ends_fetch_many_within_one_request_and_nothing_is_sent_after():
    with FakePypistats(MANY, per_second=1000, per_minute=10_000) as stats:
        stop = threading.Event()
        stopped_at = []
        threading.Timer(0.5, lambda: (stopped_at.append(time.monotonic()), stop.set())).start()
        recorded = []
        with pytest.raises(FetchStopped) as error:
            fetch_many(HttpClient(pacing=SLOW_PACING, retry=RETRY), stats.api_url, list(MANY), on_result=recorded.append, stop=stop)
        returned_at = time.monotonic()
        time.sleep(0.3)
        log = stats.log
    assert returned_at - stopped_at[0] < SLOW_PACING.interval + 0.1  # about one request time
    assert all(r.time < stopped_at[0] + 0.02 for r in log)  # none started after the stop
    answered = error.value.result.fetched["normalized"].tolist()
    assert 2 <= len(answered) == len(log) == len(recorded)  # every answer received was journaled
    assert error.value.not_asked == 200 - len(answered) and error.value.result.failed == {}
    assert f"{len(answered)} of 200 packages answered" in str(error.value)
    assert not _pypistats_threads()


def test_stop_set_after_the_last_package_returns_the_result(stats):
    stop = threading.Event()
    result = fetch_many(HttpClient(retry=RETRY), stats.api_url, ["pkg-0"], on_result=lambda counts: stop.set(), stop=stop)
    assert result.valid == 1


class _Interrupted(BaseException):
    """Stands for KeyboardInterrupt or Dagster's DagsterExecutionInterruptedError."""


def test_an_interrupted_caller_reraises_at_once_and_its_workers_stop_answering():
    def interrupt(signum, frame):
        interrupted_at.append(time.monotonic())
        raise _Interrupted()

    interrupted_at = []
    recorded = []
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with FakePypistats(MANY, per_second=1000, per_minute=10_000) as stats:
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with pytest.raises(_Interrupted):
                fetch_many(HttpClient(pacing=SLOW_PACING, retry=RETRY), stats.api_url, list(MANY), on_result=recorded.append)
            raised_at, journaled = time.monotonic(), len(recorded)
            time.sleep(0.4)
            log = stats.log
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert raised_at - interrupted_at[0] < 0.1  # without waiting for 190-odd queued packages
    assert all(r.time < interrupted_at[0] + 0.02 for r in log)  # no request started afterwards
    assert 2 <= journaled == len(recorded)  # nothing journaled after fetch_many left
    assert not _pypistats_threads()


def test_service_down_stops_fetch_many_after_journaling_every_answer(stats):
    names = [f"pkg-{i}" for i in range(40)]
    stats.counts.update({name: (1, 2, 3) for name in names})
    for name in names[10:]:
        stats.fail(name, [503] * 100)
    patient = RetryPolicy(attempts=100, initial_wait=0.01, max_wait=0.05, timeout=5, down_after=0.3)
    recorded, statuses = [], []
    started = time.monotonic()
    with pytest.raises(ServiceDown, match="HTTP 503 via direct") as error:
        fetch_many(HttpClient(retry=patient), stats.api_url, names, workers=2, on_result=recorded.append, on_status=statuses.append)
    assert time.monotonic() - started < 2.0
    assert sorted(c.normalized for c in recorded) == sorted(names[:10])  # journaled before the raise
    assert error.value.failing_for >= 0.3
    asked = len(stats.log)
    time.sleep(0.2)
    assert len(stats.log) == asked and not _pypistats_threads()
    assert statuses[-1].answered == 10 and statuses[-1].failed == 0


def test_on_status_shows_answered_and_failed_apart_with_the_last_error(stats):
    stats.fail("pkg-1", [500] * RETRY.attempts)
    statuses, progress = [], []
    fetch_many(
        HttpClient(retry=RETRY), stats.api_url, ["pkg-0", "pkg-1", "no-such-project"], workers=1,
        on_progress=lambda *args: progress.append(args), on_status=statuses.append,
    )
    assert progress[-1] == (3, 3, 1)  # the three-argument callback is unchanged
    last = statuses[-1]
    assert isinstance(last, FetchProgress) and (last.answered, last.failed, last.total, last.done) == (2, 1, 3, 3)
    assert "HTTP 500" in last.last_error and "after 3 attempts" in last.last_error
    assert statuses[0].last_error is None and last.started_monotonic <= time.monotonic()
