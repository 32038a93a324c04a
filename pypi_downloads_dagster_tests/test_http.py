"""The shared HTTP layer and the pypistats client against the local pypistats fake (and proxies)."""

import dataclasses
import socket
import threading
import time

import pytest

import requests

from pypi_downloads_dagster.services.http import (
    BadAnswer,
    HttpClient,
    HttpError,
    Pacing,
    RetryPolicy,
    ServiceDown,
    parse_proxy_pool,
    redact_url,
)
from pypi_downloads_dagster.services.pypistats import fetch_many, fetch_recent, recent_url
from pypi_downloads_dagster_tests.fakes.proxy import FakeProxy
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

FAST_RETRY = RetryPolicy(attempts=6, initial_wait=0.02, max_wait=0.3, timeout=5, rate_limited_wait=0.25)

# The real limits, 5 per second and 30 per minute, with time scaled down 4x for the second window and
# 30x for the minute window: 5 per 0.25 s and 30 per 2 s. Pacing for that is 20/s and 900/min.
SCALED = dict(per_second=5, per_minute=30, second_window=0.25, minute_window=2.0)
SCALED_PACING = Pacing(max_per_second=20, max_per_minute=900)


def counts(n):
    return {f"pkg-{i}": (i, 7 * i, 30 * i) for i in range(n)}


def test_paced_client_never_trips_the_rate_limit():
    with FakePypistats(counts(25), **SCALED) as stats:
        client = HttpClient(pacing=SCALED_PACING, retry=FAST_RETRY)
        result = fetch_many(client, stats.api_url, [f"pkg-{i}" for i in range(25)])
    assert result.failed == {} and result.valid == 25
    assert [r.status for r in stats.log].count(429) == 0
    assert stats.max_requests_in_window("127.0.0.1", 0.25) <= 5
    row = result.fetched.set_index("normalized").loc["pkg-3"]
    assert (row["last_day"], row["last_week"], row["last_month"], row["status"]) == (3, 21, 90, "valid")


def test_unpaced_burst_gets_429_and_retries_recover():
    with FakePypistats(counts(12), **SCALED) as stats:
        client = HttpClient(retry=RetryPolicy(attempts=12, initial_wait=0.05, max_wait=0.3, timeout=5, rate_limited_wait=0.25))
        result = fetch_many(client, stats.api_url, [f"pkg-{i}" for i in range(12)], workers=4)
    assert [r.status for r in stats.log].count(429) > 0, "the fake must refuse a burst"
    assert result.failed == {} and result.valid == 12


def test_names_are_requested_normalized_and_404_is_empty():
    with FakePypistats({"django": (1, 2, 3), "zope-interface": (4, 5, 6)}, per_second=100, per_minute=1000) as stats:
        client = HttpClient(retry=FAST_RETRY)
        result = fetch_many(client, stats.api_url, ["Django", "zope.interface", "No_Such.Project"])
    rows = result.fetched.set_index("normalized")
    assert rows.loc["django", "status"] == "valid" and rows.loc["django", "last_month"] == 3
    assert rows.loc["zope-interface", "last_week"] == 5
    assert rows.loc["no-such-project", "status"] == "empty" and rows["last_day"].isna()["no-such-project"]
    assert sorted(r.path for r in stats.log) == [
        "/api/packages/django/recent",
        "/api/packages/no-such-project/recent",
        "/api/packages/zope-interface/recent",
    ]
    assert recent_url("https://pypistats.org/api/", "Foo_Bar") == "https://pypistats.org/api/packages/foo-bar/recent"


def test_server_errors_and_dropped_connections_are_retried():
    with FakePypistats(counts(3), per_second=100, per_minute=1000) as stats:
        stats.fail("pkg-0", [500, 502, 503])
        stats.drop("pkg-1", times=2)
        client = HttpClient(retry=FAST_RETRY)
        result = fetch_many(client, stats.api_url, ["pkg-0", "pkg-1", "pkg-2"])
        assert result.failed == {} and result.valid == 3
        assert len(stats.requests_for("pkg-0")) == 4 and len(stats.requests_for("pkg-1")) == 3


def test_failures_after_retries_are_reported_never_recorded_as_empty():
    with FakePypistats(counts(3), per_second=100, per_minute=1000) as stats:
        stats.fail("pkg-0", [500] * 10)
        stats.garbage("pkg-1", times=10)
        client = HttpClient(retry=RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, timeout=5))
        result = fetch_many(client, stats.api_url, ["pkg-0", "pkg-1", "pkg-2"])
        assert len(stats.requests_for("pkg-1")) == 3  # a 200 that is not the API's JSON is retried
    assert set(result.failed) == {"pkg-0", "pkg-1"}
    assert "HTTP 500" in result.failed["pkg-0"] and "after 3 attempts" in result.failed["pkg-0"]
    assert "not a recent-downloads document" in result.failed["pkg-1"] and "via direct" in result.failed["pkg-1"]
    assert result.fetched["normalized"].tolist() == ["pkg-2"]


def test_proxy_pool_spreads_requests_over_egresses_each_within_its_limit():
    with FakePypistats(counts(30), **SCALED) as stats, FakeProxy("127.0.0.2", "alice", "s3cret") as one, FakeProxy(
        "127.0.0.3", "bob", "t0p"
    ) as two:
        egresses = parse_proxy_pool(f"{one.proxy_url},{two.proxy_url}")
        client = HttpClient(egresses, pacing=SCALED_PACING, retry=FAST_RETRY)
        started = time.monotonic()
        result = fetch_many(client, stats.api_url, [f"pkg-{i}" for i in range(30)])
        elapsed = time.monotonic() - started
    assert result.failed == {} and result.valid == 30
    assert set(stats.client_ips()) == {"127.0.0.2", "127.0.0.3"}
    assert [r.status for r in stats.log].count(429) == 0
    for ip in ("127.0.0.2", "127.0.0.3"):
        assert stats.max_requests_in_window(ip, 0.25) <= 5
    # Two egresses: about half the time one egress would need (30 x 0.069 s).
    assert elapsed < 30 * SCALED_PACING.interval * 0.8


def test_a_dead_proxy_is_routed_around_and_its_credentials_never_leak():
    with FakePypistats(counts(6), per_second=100, per_minute=1000) as stats, FakeProxy(
        "127.0.0.2", "alice", "s3cret"
    ) as dead, FakeProxy("127.0.0.3", "bob", "t0p") as alive:
        dead.down = True
        client = HttpClient(parse_proxy_pool(f"{dead.proxy_url},{alive.proxy_url}"), retry=FAST_RETRY)
        result = fetch_many(client, stats.api_url, [f"pkg-{i}" for i in range(6)])
        assert result.failed == {} and result.valid == 6

        only_dead = HttpClient(parse_proxy_pool(dead.proxy_url), retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.01, timeout=2))
        with pytest.raises(HttpError) as error:
            only_dead.get(f"{stats.api_url}/packages/pkg-0/recent")
    message = str(error.value)
    assert "proxy-1 127.0.0.1:" in message and "s3cret" not in message and "alice" not in message
    assert "s3cret" not in repr(client.egresses) and "s3cret" not in str(client.egresses)


def _port_with_nothing_listening() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The breaker's window scaled down: 60 s in production, half a second here.
BREAKER = RetryPolicy(attempts=6, initial_wait=0.02, max_wait=0.3, timeout=2, rate_limited_wait=0.25, down_after=0.5)


def test_an_unreachable_service_raises_service_down_within_the_breaker_window():
    port = _port_with_nothing_listening()
    recorded = []
    started = time.monotonic()
    with pytest.raises(ServiceDown) as error:
        fetch_many(HttpClient(retry=BREAKER), f"http://127.0.0.1:{port}/api", [f"pkg-{i}" for i in range(100)], on_result=recorded.append)
    assert time.monotonic() - started < 2.0  # not 100 packages x 6 attempts
    message = str(error.value)
    assert f"GET http://127.0.0.1:{port}/api/packages/" in message and "ConnectionError" in message and "via direct" in message
    assert "every egress (1) has been failing for" in message and error.value.failing_for >= 0.5
    assert recorded == [] and isinstance(error.value, HttpError)


def test_dead_proxies_bring_the_client_down_naming_their_labels_never_credentials():
    with FakePypistats(counts(1), per_second=100, per_minute=1000) as stats, FakeProxy(
        "127.0.0.2", "alice", "s3cret"
    ) as one, FakeProxy("127.0.0.3", "bob", "t0p") as two:
        one.down = two.down = True
        patient = dataclasses.replace(BREAKER, attempts=100)  # the breaker ends it, not the attempts
        client = HttpClient(parse_proxy_pool(f"{one.proxy_url},{two.proxy_url}"), retry=patient)
        with pytest.raises(ServiceDown) as error:
            client.get(f"{stats.api_url}/packages/pkg-0/recent")
        asked = len(one.requests) + len(two.requests)
        with pytest.raises(ServiceDown):  # a client that went down stays down, and asks nobody
            client.get(f"{stats.api_url}/packages/pkg-0/recent")
        assert len(one.requests) + len(two.requests) == asked
    message = str(error.value)
    assert "every egress (2) has been failing" in message and "ProxyError" in message
    assert "via proxy-1 127.0.0.1:" in message or "via proxy-2 127.0.0.1:" in message
    assert not any(secret in message for secret in ("s3cret", "t0p", "alice", "bob"))


def test_429_and_404_never_trip_the_breaker_5xx_and_rejected_answers_do():
    at_once = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.02, timeout=5, rate_limited_wait=0.02, down_after=0.0)
    with FakePypistats(counts(3), per_second=100, per_minute=1000) as stats:
        client = HttpClient(retry=at_once)
        stats.fail("pkg-0", [429, 429])
        assert fetch_recent(client, stats.api_url, "pkg-0").status == "valid"  # the rate limit is no outage
        assert fetch_recent(client, stats.api_url, "no-such-project").status == "empty"  # nor is an answer
        stats.fail("pkg-1", [503] * 4)
        with pytest.raises(ServiceDown, match=r"last error: GET http://127\.0\.0\.1:\d+/api/packages/pkg-1/recent: HTTP 503 via direct"):
            fetch_recent(client, stats.api_url, "pkg-1")
        assert len(stats.requests_for("pkg-1")) == 1  # down at once: no more retries

        stats.garbage("pkg-2", times=4)
        with pytest.raises(ServiceDown, match="HTTP 200 rejected: pkg-2: 200 answer is not a recent-downloads document"):
            fetch_recent(HttpClient(retry=at_once), stats.api_url, "pkg-2")


def test_a_dead_proxy_is_probed_now_and_then_while_the_other_carries_the_work_at_full_pace():
    with FakePypistats(counts(30), **SCALED) as stats, FakeProxy("127.0.0.2") as dead, FakeProxy("127.0.0.3") as alive:
        dead.down = True
        client = HttpClient(parse_proxy_pool(f"{dead.url},{alive.url}"), pacing=SCALED_PACING, retry=BREAKER)
        started = time.monotonic()
        result = fetch_many(client, stats.api_url, [f"pkg-{i}" for i in range(30)])
        elapsed = time.monotonic() - started
        probes = dead.requests
    assert result.failed == {} and result.valid == 30
    assert stats.client_ips() == {"127.0.0.3"} and [r.status for r in stats.log].count(429) == 0
    # One egress at full pace (29 intervals after the first request), the dead one costing next to nothing.
    assert elapsed < 30 * SCALED_PACING.interval * 1.25
    # Probed again and again as its backoff allows (0.02 s doubling to 0.3 s), never hammered.
    assert 3 <= len(probes) <= 15
    gaps = [b.time - a.time for a, b in zip(probes, probes[1:])]
    assert min(gaps) >= SCALED_PACING.interval / 2  # paced like any egress (arrival jitter aside)


def test_a_dead_egress_is_used_again_when_it_comes_back():
    with FakePypistats(counts(40), **SCALED) as stats, FakeProxy("127.0.0.2") as flaky, FakeProxy("127.0.0.3") as alive:
        flaky.down = True
        threading.Timer(0.5, lambda: setattr(flaky, "down", False)).start()
        client = HttpClient(parse_proxy_pool(f"{flaky.url},{alive.url}"), pacing=SCALED_PACING, retry=BREAKER)
        result = fetch_many(client, stats.api_url, [f"pkg-{i}" for i in range(40)])
    assert result.failed == {} and result.valid == 40
    back = [r for r in stats.log if r.client_ip == "127.0.0.2"]
    assert len(back) >= 5  # noticed within one backoff (at most 0.3 s), then used at its pace again
    for ip in ("127.0.0.2", "127.0.0.3"):
        assert stats.max_requests_in_window(ip, 0.25) <= 5


PORTAL_PAGE = "<html><body>Please log in to the Wi-Fi</body></html>"


def test_html_200_from_one_egress_is_retried_through_the_other():
    with FakePypistats(counts(6), per_second=100, per_minute=1000) as stats, FakeProxy(
        "127.0.0.2", "alice", "s3cret"
    ) as portal, FakeProxy("127.0.0.3", "bob", "t0p") as good:
        portal.override = (200, "text/html", PORTAL_PAGE)
        client = HttpClient(parse_proxy_pool(f"{portal.proxy_url},{good.proxy_url}"), retry=FAST_RETRY)
        result = fetch_many(client, stats.api_url, [f"pkg-{i}" for i in range(6)])
        assert result.failed == {} and result.valid == 6
        assert result.fetched.set_index("normalized").loc["pkg-4", "last_week"] == 28
        assert [r.status for r in portal.requests] and all(r.status == 200 for r in portal.requests)  # it was asked
        assert stats.client_ips() == {"127.0.0.3"}  # every answer came through the other egress


def test_rejected_answer_after_the_last_attempt_names_reason_and_egress_never_credentials():
    with FakePypistats(counts(1), per_second=100, per_minute=1000) as stats, FakeProxy("127.0.0.2", "alice", "s3cret") as portal:
        portal.override = (200, "text/html", PORTAL_PAGE)
        client = HttpClient(parse_proxy_pool(portal.proxy_url), retry=RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, timeout=5))
        with pytest.raises(HttpError) as error:
            fetch_recent(client, stats.api_url, "pkg-0")
        assert len(portal.requests) == 3 and stats.log == []
    message = str(error.value)
    assert "after 3 attempts" in message and "HTTP 200" in message and "was rejected" in message
    assert "not a recent-downloads document" in message and "Wi-Fi" in message
    assert f"via proxy-1 127.0.0.1:{portal.httpd.server_address[1]}" in message
    assert "s3cret" not in message and "alice" not in message
    assert error.value.status == 200 and isinstance(error.value.__cause__, BadAnswer)


def test_validate_bad_answer_is_retried_and_other_exceptions_are_not():
    with FakePypistats(counts(1), per_second=100, per_minute=1000) as stats:
        client = HttpClient(retry=FAST_RETRY)
        url = f"{stats.api_url}/packages/pkg-0/recent"
        seen = []

        def twice_bad(response: requests.Response) -> None:
            seen.append(response.status_code)
            if len(seen) <= 2:
                raise BadAnswer("not yet")

        assert client.get(url, validate=twice_bad).json()["package"] == "pkg-0"
        assert seen == [200, 200, 200] and len(stats.requests_for("pkg-0")) == 3

        def buggy(response: requests.Response) -> None:
            raise KeyError("a bug in the caller")

        with pytest.raises(KeyError):  # a bug is not a bad answer: no retries
            client.get(url, validate=buggy)
        assert len(stats.requests_for("pkg-0")) == 4


def test_proxy_pool_parsing_and_redaction():
    assert [e.label for e in parse_proxy_pool(" ")] == ["direct"]
    assert [e.label for e in parse_proxy_pool("http://u:p@10.0.0.1:3128, https://h.example")] == [
        "proxy-1 10.0.0.1:3128",
        "proxy-2 h.example:443",
    ]
    with pytest.raises(ValueError) as error:
        parse_proxy_pool("socks5://user:hunter2@h:1080")
    assert "hunter2" not in str(error.value) and "entry 1" in str(error.value)
    assert redact_url("http://user:pw@host:8080/x?y=1") == "http://host:8080/x?y=1"


def test_pacing_interval_stays_below_both_limits():
    pacing = Pacing(5, 30)
    assert pacing.interval > 2.0  # 30/min is the tighter limit: a little more than 2 s apart
    assert 60 / pacing.interval < 30 and 1 / pacing.interval < 5
    with pytest.raises(ValueError):
        Pacing(0, 30)


class _Gate:
    def __init__(self, *labels):
        self.labels = set(labels)

    def held(self):
        return frozenset(self.labels)


def test_a_gated_client_sends_only_through_the_egresses_it_holds_and_waits_while_it_holds_none():
    with FakePypistats(counts(6), per_second=100, per_minute=1000) as stats, FakeProxy("127.0.0.2") as one, FakeProxy("127.0.0.3") as two:
        pool = parse_proxy_pool(f"{one.url},{two.url}")
        gate = _Gate(pool[1].label)
        client = HttpClient(pool, retry=FAST_RETRY, gate=gate)
        assert fetch_many(client, stats.api_url, ["pkg-0", "pkg-1", "pkg-2"]).valid == 3
        assert stats.client_ips() == {"127.0.0.3"}

        gate.labels = set()  # another run holds both: wait, then go once one is handed over
        threading.Timer(0.3, lambda: gate.labels.add(pool[0].label)).start()
        started = time.monotonic()
        assert fetch_recent(client, stats.api_url, "pkg-3").status == "valid"
        assert time.monotonic() - started >= 0.25
        assert stats.requests_for("pkg-3")[0].client_ip == "127.0.0.2"
