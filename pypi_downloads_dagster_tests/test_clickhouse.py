"""The ClickPy client against a real ClickHouse engine (chDB) behind ClickHouse's HTTP interface.

Every count is checked against a pandas computation of pypistats' definition (REFERENCE.md section 7)
over the same synthetic rows; errors, retries and secrets over real HTTP to the fake on 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import socket
import threading
import time
import traceback

import pandas as pd
import pytest
import requests

pytest.importorskip("chdb", reason="the fake ClickHouse needs chDB: pip install -e '.[test]'")

from pypi_downloads_dagster.services.clickhouse import (  # noqa: E402 - after the skip
    MIRROR_INSTALLERS,
    ClickHouseClient,
    ClickHouseError,
    ClickHouseUnavailable,
    daily_history,
    daily_totals,
    last_complete_day,
    name_ranges,
    recent_counts,
)
from pypi_downloads_dagster_tests.fakes.clickhouse import (  # noqa: E402
    ChdbEngine,
    FakeClickHouse,
    load_downloads,
    synthetic_downloads,
)

D = dt.date(2026, 3, 31)
SECRET = "s3cret-Pa55word"
#: pypistats' `without_mirrors` installers, written out here so the reference does not share the code's list.
MIRRORS = ("bandersnatch", "z3c.pypimirror", "Artifactory", "devpi")


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return synthetic_downloads(D, projects=400, seed=7)


@pytest.fixture(scope="module")
def fake(rows, clickhouse_engine):
    clickhouse_engine.query("TRUNCATE TABLE pypi.pypi_downloads_per_day_by_version_by_installer_by_type")
    load_downloads(clickhouse_engine, rows)
    with FakeClickHouse(clickhouse_engine, users={"default": "", "demo": "", "reader": SECRET}) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_fake(request):
    if "fake" in request.fixturenames:
        server = request.getfixturevalue("fake")
        server.clear_faults()
        server.clear_log()
    yield


@pytest.fixture
def client(fake):
    sleeps = []
    with ClickHouseClient(fake.url, "reader", SECRET, attempts=3, sleep=sleeps.append) as c:
        c.sleeps = sleeps
        yield c


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def reference_recent(rows: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """pypistats' recent counts, straight from the definition, in pandas."""
    kept = rows[~rows["installer"].isin(MIRRORS)]
    month = kept[(kept["date"] > day - dt.timedelta(days=30)) & (kept["date"] <= day)]
    frame = pd.DataFrame(
        {
            "project": month["project"],
            "normalized": month["project"].map(normalize),
            "last_day": month["count"].where(month["date"] == day, 0),
            "last_week": month["count"].where(month["date"] > day - dt.timedelta(days=7), 0),
            "last_month": month["count"],
        }
    )
    out = frame.groupby("normalized", as_index=False).agg(
        project=("project", "min"), last_day=("last_day", "sum"), last_week=("last_week", "sum"), last_month=("last_month", "sum")
    )
    out = out[out["last_month"] > 0]
    return out[["project", "normalized", "last_day", "last_week", "last_month"]].sort_values("normalized", ignore_index=True)


def reference_history(rows: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    kept = rows[~rows["installer"].isin(MIRRORS) & (rows["date"] >= start) & (rows["date"] <= end)]
    out = kept.assign(name=kept["project"].map(normalize)).groupby(["date", "name"], as_index=False)["count"].sum()
    out = out[out["count"] > 0].rename(columns={"count": "downloads"})
    return out.sort_values(["date", "name"], ignore_index=True)


def as_plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Values only (strings as objects, dates as datetime.date), to compare with the reference."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype != "int64":
            out[column] = out[column].astype(object)
    return out


# -- counts ----------------------------------------------------------------------------------------


def test_recent_counts_equal_the_definition(client, rows):
    assert set(MIRROR_INSTALLERS) == set(MIRRORS)
    got = recent_counts(client, D)
    assert list(got.columns) == ["project", "normalized", "last_day", "last_week", "last_month"]
    assert all(got[c].dtype == "int64" for c in ("last_day", "last_week", "last_month"))
    assert got["normalized"].is_unique
    expected = reference_recent(rows, D)
    assert len(expected) > 200
    pd.testing.assert_frame_equal(as_plain(got), as_plain(expected))


def test_recent_counts_at_the_boundaries(client):
    got = recent_counts(client, D).set_index("normalized")
    counts = lambda name: tuple(int(v) for v in got.loc[name, ["last_day", "last_week", "last_month"]])  # noqa: E731
    assert counts("edge-day-only") == (5, 5, 5)
    assert counts("edge-week-boundary") == (0, 7, 18)  # D-6 in the week, D-7 in the month only
    assert counts("edge-month-boundary") == (0, 0, 13)  # D-29 in, D-30 out
    assert counts("edge-after-d") == (2, 2, 2)  # rows after D are not counted
    assert counts("edge-mirror-mixed") == (3, 3, 3)  # mirrors' downloads are not counted
    assert counts("edge-no-last-day") == (0, 53, 112)  # downloads in the month, none on D
    assert counts("edge-duplicate-key") == (301, 301, 301)
    # Spellings that normalize alike are one project: Foo_Bar + foo-bar on D, foo.bar D-5, FOO__bar D-25.
    assert counts("foo-bar") == (128, 199, 272)
    assert counts("django") == (79, 162, 162)
    assert counts("zope-interface") == (7, 96, 96)  # `Zope.Interface` and `zope.interface`: parts apart
    assert got.loc["foo-bar", "project"] == "FOO__bar"  # the smallest stored spelling
    assert got.loc["zope-interface", "project"] == "Zope.Interface"
    # Nothing (but mirrors) in the 30 days: no row, as pypistats answers 404.
    for absent in ("edge-outside-only", "edge-after-d-only", "edge-mirror-only", "foo_bar", "Foo_Bar"):
        assert absent not in got.index


@pytest.mark.parametrize("parts", [3, 26])
def test_parts_give_the_same_counts(client, fake, parts):
    whole = recent_counts(client, D)
    split = recent_counts(client, D, parts=parts)
    pd.testing.assert_frame_equal(split, whole)
    assert split.set_index("normalized").loc["zope-interface", "last_month"] == 96  # summed across ranges
    assert len(fake.log) == 1 + parts


def test_parts_are_queries_over_name_ranges(fake, client):
    recent_counts(client, D, parts=3)
    assert len(fake.log) == 3 and all(entry.status == 200 for entry in fake.log)
    assert name_ranges(3) == [("", "j"), ("j", "r"), ("r", "")]
    with pytest.raises(ValueError):
        name_ranges(0)


def test_recent_counts_for_another_day(client, rows):
    day = D - dt.timedelta(days=3)
    pd.testing.assert_frame_equal(as_plain(recent_counts(client, day)), as_plain(reference_recent(rows, day)))


@pytest.mark.parametrize(("start", "end"), [(D - dt.timedelta(days=9), D), (D, D), (D - dt.timedelta(days=40), D + dt.timedelta(days=1))])
def test_daily_history_equals_the_rows(client, rows, start, end):
    got = daily_history(client, start, end)
    assert list(got.columns) == ["date", "name", "downloads"] and got["downloads"].dtype == "int64"
    assert isinstance(got["date"].iloc[0], dt.date)
    expected = reference_history(rows, start, end)
    pd.testing.assert_frame_equal(as_plain(got), as_plain(expected))
    pd.testing.assert_frame_equal(daily_history(client, start, end, parts=4), got)


def test_daily_totals(client, rows):
    start, end = D - dt.timedelta(days=2), D + dt.timedelta(days=5)
    got = daily_totals(client, start, end)
    expected = reference_history(rows, start, end).groupby("date", as_index=False)["downloads"].sum()
    pd.testing.assert_frame_equal(as_plain(got), as_plain(expected))
    assert got["date"].iloc[-1] == D + dt.timedelta(days=1)  # the last day loaded


def test_an_empty_answer_is_an_empty_frame(client):
    got = recent_counts(client, dt.date(2001, 1, 1))
    assert got.empty and list(got.columns) == ["project", "normalized", "last_day", "last_week", "last_month"]
    assert daily_history(client, dt.date(2001, 1, 1), dt.date(2001, 1, 2)).empty


@pytest.mark.parametrize(
    ("now", "day"),
    [
        ("2026-04-01T00:00:00", "2026-03-31"),
        ("2026-04-01T23:59:59", "2026-03-31"),
        ("2026-03-31T23:59:59.999", "2026-03-30"),
        ("2026-01-01T00:30:00", "2025-12-31"),
    ],
)
def test_last_complete_day(now, day):
    timestamp = dt.datetime.fromisoformat(now).replace(tzinfo=dt.timezone.utc).timestamp()
    assert last_complete_day(timestamp) == dt.date.fromisoformat(day)


# -- errors, retries and secrets ---------------------------------------------------------------------


def _all_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def test_wrong_password_names_code_516_without_the_password(fake, caplog):
    password = "wrong-" + SECRET
    with ClickHouseClient(fake.url, "reader", password, sleep=lambda s: None) as c:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(ClickHouseError) as caught:
                recent_counts(c, D)
        assert password not in repr(c)
    error = caught.value
    assert error.code == 516 and error.status == 403
    assert "516" in str(error) and "Authentication failed" in str(error)
    assert password not in _all_text(error) and SECRET not in _all_text(error)
    assert password not in caplog.text
    assert len(fake.log) == 1  # a refused login is not retried


def test_unknown_user_is_516(fake):
    with ClickHouseClient(fake.url, "nobody", sleep=lambda s: None) as c, pytest.raises(ClickHouseError) as caught:
        c.query_arrow("SELECT 1")
    assert caught.value.code == 516 and "nobody" in str(caught.value)


def test_credentials_in_the_url_are_used_and_hidden(fake, rows):
    url = fake.url.replace("http://", f"http://reader:{SECRET}@")
    with ClickHouseClient(url) as c:
        assert c.user == "reader" and SECRET not in repr(c) and SECRET not in c.url
        assert len(recent_counts(c, D)) == len(reference_recent(rows, D))
    fake.fail(503, times=5, text=f"upstream http://reader:{SECRET}@10.0.0.1/ failed\n")
    with ClickHouseClient(url, attempts=2, sleep=lambda s: None) as c, pytest.raises(ClickHouseUnavailable) as caught:
        c.query_arrow("SELECT 1")
    assert SECRET not in _all_text(caught.value) and "***@" in str(caught.value)


def test_bad_sql_is_an_error_with_its_code(client, fake):
    with pytest.raises(ClickHouseError) as caught:
        client.query_arrow("SELEC 1")
    assert caught.value.code == 62 and caught.value.status == 400 and "SYNTAX_ERROR" in str(caught.value)
    assert SECRET not in _all_text(caught.value)
    with pytest.raises(ClickHouseError) as caught:
        recent_counts(client, D, table="pypi.no_such_table")
    assert caught.value.code == 60 and caught.value.status == 404 and "no_such_table" in str(caught.value)
    assert len(fake.log) == 2 and client.sleeps == []  # neither is retried


def test_503_then_success_is_retried(client, fake, rows):
    fake.fail(503)
    got = recent_counts(client, D)
    assert len(got) == len(reference_recent(rows, D))
    assert [entry.status for entry in fake.log] == [503, 200]
    assert len(client.sleeps) == 1


def test_5xx_every_time_gives_up_after_the_attempts(client, fake):
    fake.fail(502, times=10)
    with pytest.raises(ClickHouseUnavailable) as caught:
        recent_counts(client, D)
    assert caught.value.status == 502 and "3 attempts" in str(caught.value) and caught.value.code is None
    assert len(fake.log) == 3


def test_a_clickhouse_500_is_retried_only_when_transient(client, fake, rows):
    fake.fail(500, code=241)  # MEMORY_LIMIT_EXCEEDED: other queries may have finished
    assert len(recent_counts(client, D)) == len(reference_recent(rows, D))
    fake.clear_log()
    fake.fail(500, code=43)  # ILLEGAL_TYPE_OF_ARGUMENT: the query itself is wrong
    with pytest.raises(ClickHouseError) as caught:
        recent_counts(client, D)
    assert caught.value.code == 43 and len(fake.log) == 1


@pytest.mark.parametrize("fault", ["drop", "truncate"])
def test_answers_lost_on_the_way_are_retried(client, fake, rows, fault):
    getattr(fake, fault)()
    assert len(recent_counts(client, D)) == len(reference_recent(rows, D))
    assert len(fake.log) == 2


def test_an_error_in_the_middle_of_an_answer_is_caught(client, fake, rows):
    fake.fail_midstream(code=241)
    assert len(recent_counts(client, D)) == len(reference_recent(rows, D))  # transient: asked again
    fake.fail_midstream(code=396, message="Limit for result exceeded, max rows: 1.00 thousand")
    with pytest.raises(ClickHouseError) as caught:
        recent_counts(client, D)
    assert caught.value.code == 396 and caught.value.status == 200 and "while sending" in str(caught.value)


def test_connection_refused_is_a_clear_error():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = []
    with ClickHouseClient(f"http://reader:{SECRET}@127.0.0.1:{port}", attempts=3, sleep=sleeps.append) as c:
        with pytest.raises(ClickHouseUnavailable) as caught:
            recent_counts(c, D)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "ConnectionError" in message and "3 attempts" in message
    assert caught.value.status is None and SECRET not in _all_text(caught.value)
    assert len(sleeps) == 2


def test_a_slow_server_times_out(fake):
    fake.delay(0.6, times=2)
    with ClickHouseClient(fake.url, attempts=2, read_timeout=0.2, sleep=lambda s: None) as c:
        with pytest.raises(ClickHouseUnavailable) as caught:
            c.query_arrow("SELECT 1")
    assert "Timeout" in str(caught.value) and "2 attempts" in str(caught.value)
    deadline = time.monotonic() + 5
    while len(fake.log) < 2 and time.monotonic() < deadline:  # let the slow answers finish before the next test
        time.sleep(0.02)


def test_a_proxy_page_with_status_200_is_retried(client, fake, rows, monkeypatch):
    # A 200 whose body is not an Arrow stream (a captive portal's page) is asked again.
    original = fake.engine.query
    calls = []

    def portal_once(sql, fmt="TabSeparated", **kwargs):
        calls.append(sql)
        return b"<html>Please log in</html>" if len(calls) == 1 else original(sql, fmt, **kwargs)

    monkeypatch.setattr(fake.engine, "query", portal_once)
    assert len(recent_counts(client, D)) == len(reference_recent(rows, D))
    assert len(calls) == 2


def test_bad_client_arguments():
    with pytest.raises(ValueError, match="not an http"):
        ClickHouseClient(f"ftp://u:{SECRET}@host")
    try:
        ClickHouseClient(f"ftp://u:{SECRET}@host")
    except ValueError as exc:
        assert SECRET not in str(exc)
    with pytest.raises(ValueError):
        recent_counts(ClickHouseClient("http://127.0.0.1:1"), D, table="no_database")


# -- the fake speaks ClickHouse's HTTP interface ------------------------------------------------------


def test_fake_formats_and_query_sources(fake):
    assert requests.post(fake.url, data="SELECT 1, 'a'").content == b"1\ta\n"  # TabSeparated by default
    answer = requests.get(fake.url, params={"query": "SELECT 2 AS x", "default_format": "JSONEachRow"})
    assert answer.status_code == 200 and answer.content == b'{"x":2}\n' and answer.headers["X-ClickHouse-Format"] == "JSONEachRow"
    answer = requests.post(fake.url, data="SELECT 3 AS x", headers={"X-ClickHouse-Format": "CSVWithNames"})
    assert answer.content == b'"x"\n3\n'
    assert requests.post(fake.url, data="SELECT 4 FORMAT CSV", params={"default_format": "JSON"}).content == b"4\n"
    assert requests.post(fake.url, params={"query": "SELECT"}, data=" 5").content == b"5\n"  # query + body
    assert requests.get(f"{fake.url}/ping").content == b"Ok.\n"
    answer = requests.post(fake.url, data="SELECT {n:UInt8} + 1, {s:String}", params={"param_n": "41", "param_s": "x y"})
    assert answer.content == b"42\tx y\n"


def test_fake_auth_ways(fake):
    basic = "Basic " + base64.b64encode(f"reader:{SECRET}".encode()).decode()
    assert requests.post(fake.url, data="SELECT 1", headers={"Authorization": basic}).status_code == 200
    assert requests.post(fake.url, data="SELECT 1", params={"user": "reader", "password": SECRET}).status_code == 200
    for kwargs in (
        {"headers": {"X-ClickHouse-User": "reader", "X-ClickHouse-Key": "nope"}},
        {"params": {"user": "reader", "password": "nope"}},
        {"headers": {"Authorization": "Basic " + base64.b64encode(b"reader:nope").decode()}},
        {"headers": {"Authorization": basic}, "params": {"user": "reader"}},  # two ways at once
    ):
        answer = requests.post(fake.url, data="SELECT 1", **kwargs)
        assert answer.status_code == 403 and answer.headers["X-ClickHouse-Exception-Code"] == "516"
        assert answer.text.startswith("Code: 516. DB::Exception: ") and "(AUTHENTICATION_FAILED)" in answer.text


def test_fake_errors_and_settings(fake):
    answer = requests.get(fake.url, params={"query": "CREATE TABLE t (x UInt8) ENGINE = Memory"})
    assert answer.status_code == 500 and answer.headers["X-ClickHouse-Exception-Code"] == "164"  # GET is read-only
    answer = requests.post(fake.url, data="SELECT * FROM pypi.nope")
    assert answer.status_code == 404 and answer.headers["X-ClickHouse-Exception-Code"] == "60"
    answer = requests.post(fake.url, data="SELECT 1", params={"no_such_setting": "1"})
    assert answer.status_code == 404 and answer.headers["X-ClickHouse-Exception-Code"] == "115"
    limited = {"max_result_rows": "2", "result_overflow_mode": "throw"}
    answer = requests.post(fake.url, data="SELECT number FROM numbers(10)", params=limited)
    assert answer.status_code == 500 and answer.headers["X-ClickHouse-Exception-Code"] == "396"
    # Settings and the database hold for one query only.
    assert requests.post(fake.url, data="SELECT number FROM numbers(10) FORMAT CSV").content.count(b"\n") == 10
    assert requests.post(fake.url, data="SELECT currentDatabase()", params={"database": "pypi"}).content == b"pypi\n"
    assert requests.post(fake.url, data="SELECT currentDatabase()").content == b"default\n"


def test_fake_serves_concurrent_queries(client, fake):
    expected = recent_counts(client, D)
    results, errors = [], []

    def work():
        try:
            with ClickHouseClient(fake.url, "reader", SECRET) as c:
                results.append(recent_counts(c, D, parts=2))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 6
    for result in results:
        pd.testing.assert_frame_equal(result, expected)


def test_one_engine_per_process(fake):
    with pytest.raises(RuntimeError, match="one engine per process"):
        ChdbEngine()
