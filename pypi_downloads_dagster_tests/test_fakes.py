"""The fakes speak the real protocols (REFERENCE.md sections 2 and 3), checked with plain `requests`."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from pypi_downloads_dagster_tests.fakes.pypi_index import JSON_TYPE, FakeIndex, negotiate
from pypi_downloads_dagster_tests.fakes.pypistats import FOREIGN_404_BODY, RATE_LIMIT_BODY, FakePypistats
from pypi_downloads_dagster_tests.fakes.proxy import FakeProxy

PROJECTS = ["zope.interface", "Django", "requests", "a_b-C", "Flask"]


@pytest.fixture
def session():
    # trust_env=False: proxy variables in the environment must not reroute requests to the fakes.
    with requests.Session() as s:
        s.trust_env = False
        yield s


@pytest.fixture
def index():
    with FakeIndex(PROJECTS) as server:
        yield server


@pytest.fixture
def stats():
    counts = {"django": (10, 70, 300), "zope-interface": (1, 7, 30), "requests": (100, 700, 3000)}
    with FakePypistats(counts, per_second=5, per_minute=8, second_window=0.3, minute_window=1.0) as server:
        yield server


# -- PyPI simple index --


def test_index_json_when_asked(index, session):
    r = session.get(index.index_url, headers={"Accept": JSON_TYPE})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == JSON_TYPE
    doc = r.json()
    assert doc["meta"]["api-version"] == "1.4"
    names = [p["name"] for p in doc["projects"]]
    assert names == ["a_b-C", "Django", "Flask", "requests", "zope.interface"]  # by normalized name
    assert doc["meta"]["_last-serial"] == max(p["_last-serial"] for p in doc["projects"])
    assert r.headers["X-PyPI-Last-Serial"] == str(doc["meta"]["_last-serial"])


@pytest.mark.parametrize("accept", [None, "*/*", "text/html", "application/json"])
def test_index_html_by_default(index, session, accept):
    r = session.get(index.index_url, headers={"Accept": accept} if accept else {})
    assert r.headers["Content-Type"] == "text/html"
    assert r.text.startswith("<!DOCTYPE html>\n<html>\n  <head>\n")
    assert '<meta name="pypi:repository-version" content="1.4">' in r.text
    anchors = re.findall(r'<a href="(/simple/[^"]+/)">([^<]+)</a>', r.text)
    assert ("/simple/django/", "Django") in anchors
    assert ("/simple/zope-interface/", "zope.interface") in anchors
    assert ("/simple/a-b-c/", "a_b-C") in anchors
    assert len(anchors) == len(PROJECTS)
    assert r.text.endswith("</body>\n</html>\n")


def test_index_q_values():
    assert negotiate(f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1") == JSON_TYPE
    assert negotiate(f"text/html, {JSON_TYPE};q=0.5") == "text/html"
    assert negotiate(f"{JSON_TYPE};q=0.5, */*;q=0.9") == "text/html"
    assert negotiate(f"{JSON_TYPE}, text/html;q=0") == JSON_TYPE
    assert negotiate("image/png") == "text/html"  # nothing acceptable: HTML, not 406


def test_index_old_mirror_without_json(index, session):
    index.json_enabled = False
    r = session.get(index.index_url, headers={"Accept": JSON_TYPE})
    assert r.headers["Content-Type"] == "text/html"
    assert index.accepts == [JSON_TYPE]


def test_index_html_escapes_names():
    with FakeIndex(["a&b"]) as server:
        assert ">a&amp;b</a>" in requests.get(server.index_url).text


def test_index_truncated_with_consistent_length(index, session):
    full = session.get(index.index_url, headers={"Accept": JSON_TYPE}).content
    index.truncate_at = 0.5
    r = session.get(index.index_url, headers={"Accept": JSON_TYPE})
    assert r.status_code == 200
    assert r.content == full[: len(full) // 2]
    assert int(r.headers["Content-Length"]) == len(r.content)
    with pytest.raises(ValueError):
        r.json()


def test_index_connection_closed_before_content_length(index, session):
    index.truncate_at, index.truncate_mode = 0.5, "close"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # urllib3 enforces Content-Length
        session.get(index.index_url)


def test_index_override(index, session):
    index.override = (200, "text/html", "<html><body>Please log in to the Wi-Fi</body></html>")
    r = session.get(index.index_url, headers={"Accept": JSON_TYPE})
    assert (r.status_code, r.headers["Content-Type"]) == (200, "text/html")
    assert "Wi-Fi" in r.text
    index.override = (503, "text/plain", b"backend down")
    assert session.get(index.index_url).status_code == 503


# -- pypistats --


def test_pypistats_recent(stats, session):
    r = session.get(f"{stats.api_url}/packages/django/recent")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"data": {"last_day": 10, "last_month": 300, "last_week": 70}, "package": "django",
                        "type": "recent_downloads"}
    assert r.text == json.dumps(r.json(), sort_keys=True, separators=(",", ":")) + "\n"  # Flask's jsonify


def test_pypistats_does_not_lower_case(stats, session):
    r = session.get(f"{stats.api_url}/packages/Django/recent")
    assert r.status_code == 404
    assert r.text == "404"
    assert r.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("name", ["zope.interface", "zope_interface", "zope-interface"])
def test_pypistats_rewrites_dots_and_underscores(stats, session, name):
    r = session.get(f"{stats.api_url}/packages/{name}/recent")
    assert r.status_code == 200
    assert r.json()["package"] == "zope-interface"
    assert len(stats.requests_for("zope.interface")) == 1


def test_pypistats_period_filter(stats, session):
    r = session.get(f"{stats.api_url}/packages/requests/recent", params={"period": "week"})
    assert r.json()["data"] == {"last_week": 700}
    bad = session.get(f"{stats.api_url}/packages/requests/recent", params={"period": "year"})
    assert (bad.status_code, bad.text) == (404, "404")


def test_pypistats_rate_limit_and_reset(stats, session):
    url = f"{stats.api_url}/packages/django/recent"
    statuses = [session.get(url).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    refused = session.get(url)
    assert refused.status_code == 429
    assert refused.content == RATE_LIMIT_BODY
    assert "Retry-After" not in refused.headers
    assert refused.headers["Content-Type"].startswith("text/html")
    time.sleep(0.35)  # the 0.3 s "second" window has passed
    assert session.get(url).status_code == 200
    assert stats.max_requests_in_window("127.0.0.1", 0.3) == 7


def test_pypistats_minute_limit(session):
    with FakePypistats({"django": (1, 2, 3)}, per_second=5, per_minute=8, second_window=0.1, minute_window=0.5) as stats:
        url = f"{stats.api_url}/packages/django/recent"
        seen = []
        for _ in range(3):  # 3 bursts of 3 in separate "second" windows: the 9th passes 8 per "minute"
            seen += [session.get(url).status_code for _ in range(3)]
            time.sleep(0.11)
        assert seen == [200] * 8 + [429]
        time.sleep(0.5)
        assert session.get(url).status_code == 200


def test_pypistats_limits_are_per_client_ip(stats, session):
    url = f"{stats.api_url}/packages/django/recent"
    assert [session.get(url).status_code for _ in range(6)][-1] == 429
    with FakeProxy(source_ip="127.0.0.2") as proxy:
        assert session.get(url, proxies=proxy.proxies).status_code == 200


def test_pypistats_fault_injection(session):
    stats = FakePypistats({"django": (10, 70, 300)}, per_second=100, per_minute=100).start()
    url = f"{stats.api_url}/packages/django/recent"
    stats.fail("django", [500, 502])
    assert [session.get(url).status_code for _ in range(3)] == [500, 502, 200]
    stats.drop("django", 1)
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(url)
    stats.garbage("django")
    r = session.get(url)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    assert session.get(url).json()["package"] == "django"
    assert [r.status for r in stats.requests_for("django")] == [500, 502, 200, None, 200, 200]
    stats.stop()


def test_pypistats_foreign_404(stats, session):
    url = f"{stats.api_url}/packages/django/recent"
    stats.foreign_404("django", times=2)
    answers = [session.get(url) for _ in range(3)]
    assert [(r.status_code, r.content) for r in answers[:2]] == [(404, FOREIGN_404_BODY)] * 2
    assert answers[2].json()["package"] == "django"
    unknown = session.get(f"{stats.api_url}/packages/no-such-project/recent")
    assert (unknown.status_code, unknown.content) == (404, b"404")  # pypistats' own answer differs


# -- proxy --


def test_proxy_forwards_and_binds_source_ip(stats, session):
    with FakeProxy(source_ip="127.0.0.2") as p2, FakeProxy(source_ip="127.0.0.3") as p3:
        for proxy in (p2, p3):
            r = session.get(f"{stats.api_url}/packages/django/recent", proxies=proxy.proxies)
            assert r.status_code == 200
            assert r.json()["data"]["last_day"] == 10
        missing = session.get(f"{stats.api_url}/packages/Django/recent", proxies=p2.proxies)
        assert (missing.status_code, missing.text) == (404, "404")
        assert [r.client_ip for r in stats.log] == ["127.0.0.2", "127.0.0.3", "127.0.0.2"]
        assert [r.status for r in p2.requests] == [200, 404]


def test_proxy_credentials(stats, session):
    url = f"{stats.api_url}/packages/django/recent"
    with FakeProxy(source_ip="127.0.0.2", username="user", password="p@ss") as proxy:
        assert session.get(url, proxies=proxy.proxies).status_code == 200
        refused = session.get(url, proxies={"http": proxy.url})
        assert refused.status_code == 407
        assert refused.headers["Proxy-Authenticate"].startswith("Basic")
        wrong = session.get(url, proxies={"http": proxy.url.replace("http://", "http://user:nope@")})
        assert wrong.status_code == 407
    assert len(stats.log) == 1


def test_proxy_override_answers_without_asking_upstream(stats, session):
    url = f"{stats.api_url}/packages/django/recent"
    with FakeProxy(source_ip="127.0.0.2", username="user", password="pw") as proxy:
        proxy.override = (200, "text/html", "<html><body>Please log in to the Wi-Fi</body></html>")
        r = session.get(url, proxies=proxy.proxies)
        assert (r.status_code, r.headers["Content-Type"]) == (200, "text/html") and "Wi-Fi" in r.text
        assert session.get(url, proxies={"http": proxy.url}).status_code == 407  # credentials still checked
        proxy.override = (404, "text/html", b"<html>Not Found</html>")
        assert session.get(url, proxies=proxy.proxies).status_code == 404
        assert [r.status for r in proxy.requests] == [200, 407, 404]
        proxy.override = None
        assert session.get(url, proxies=proxy.proxies).json()["package"] == "django"
    assert len(stats.log) == 1  # only the last request reached pypistats


def test_proxy_refusals_and_faults(stats, index, session):
    with FakeProxy() as proxy:
        assert session.get("http://192.0.2.1/simple/", proxies=proxy.proxies).status_code == 403
        # The index's early close reaches the client through the proxy as a short body too.
        index.truncate_at, index.truncate_mode = 0.5, "close"
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            session.get(index.index_url, proxies=proxy.proxies)
        stats.drop("django")
        assert session.get(f"{stats.api_url}/packages/django/recent", proxies=proxy.proxies).status_code == 502
        proxy.down = True
        with pytest.raises(requests.exceptions.ConnectionError):  # on a kept-alive connection
            session.get(f"{stats.api_url}/packages/django/recent", proxies=proxy.proxies)
        with pytest.raises(requests.exceptions.ConnectionError):  # on a new one
            requests.get(f"{stats.api_url}/packages/django/recent", proxies=proxy.proxies)
        assert proxy.requests[-1].status is None
