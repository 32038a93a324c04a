"""Fetching and checking the simple index against the local index fake."""

import pytest

from pypi_downloads_dagster.services.http import HttpClient, HttpError, RetryPolicy
from pypi_downloads_dagster.services.pypi_index import IndexFormatError, JSON_TYPE, fetch_index, parse_index_html, parse_index_json
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex

PROJECTS = ["Django", "zope.interface", "requests", "Foo_Bar", "a", "0"]
CLIENT = HttpClient(retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02, timeout=5))


@pytest.mark.parametrize("json_enabled, fmt", [(True, "json"), (False, "html")])
def test_json_and_html_give_the_same_projects(json_enabled, fmt):
    with FakeIndex(PROJECTS) as index:
        index.json_enabled = json_enabled
        result = fetch_index(CLIENT, index.index_url)
    assert JSON_TYPE in index.accepts[0]
    assert result.format == fmt
    frame = result.projects
    assert sorted(frame["name"]) == sorted(PROJECTS)
    row = frame.set_index("name").loc["zope.interface"]
    assert row["normalized"] == "zope-interface" and row["url"] == "https://pypi.org/simple/zope-interface/"
    assert frame.set_index("name").loc["Foo_Bar", "normalized"] == "foo-bar"
    assert result.invalid_names == [] and result.duplicates == 0


def test_invalid_and_duplicate_names_are_dropped_and_counted():
    names = [f"project-{i}" for i in range(200)] + ["-bad-", "Django", "django"]
    with FakeIndex(names) as index:
        result = fetch_index(CLIENT, index.index_url)
    assert result.invalid_names == ["-bad-"]
    assert result.duplicates == 1 and len(result.projects) == 201


@pytest.mark.parametrize("json_enabled", [True, False])
def test_a_half_body_is_detected_as_truncated(json_enabled):
    with FakeIndex([f"project-{i}" for i in range(300)]) as index:
        index.json_enabled = json_enabled
        index.truncate_at, index.truncate_mode = 0.5, "length"
        with pytest.raises(IndexFormatError, match="truncated"):
            fetch_index(CLIENT, index.index_url)


def test_a_connection_closed_before_content_length_is_an_error():
    with FakeIndex([f"project-{i}" for i in range(300)]) as index:
        index.truncate_at, index.truncate_mode = 0.5, "close"
        with pytest.raises(HttpError, match="after 2 attempts"):
            fetch_index(CLIENT, index.index_url)
        assert len(index.requests) == 2, "a cut-off body is retried"


def test_an_error_page_or_portal_is_not_an_index():
    portal = b"<html><body><h1>Sign in to the network</h1><a href='/login'>Log in</a><a href='/tos'>Terms</a></body></html>"
    with FakeIndex(PROJECTS) as index:
        index.override = (200, "text/html", portal)
        with pytest.raises(IndexFormatError, match="not a simple index"):
            fetch_index(CLIENT, index.index_url)
        index.override = (200, "application/json", b'{"error": "maintenance"}')
        with pytest.raises(IndexFormatError, match="api-version"):
            fetch_index(CLIENT, index.index_url)
        index.override = (200, "text/plain", b"hello")
        with pytest.raises(IndexFormatError, match="Content-Type 'text/plain'"):
            fetch_index(CLIENT, index.index_url)
        index.override = (503, "text/html", b"busy")
        with pytest.raises(HttpError, match="HTTP 503"):
            fetch_index(CLIENT, index.index_url)


def test_min_projects_guards_against_a_short_index():
    with FakeIndex(PROJECTS) as index:
        with pytest.raises(IndexFormatError, match="fewer than the 100 required"):
            fetch_index(CLIENT, index.index_url, min_projects=100)


def test_parsers_reject_malformed_documents():
    with pytest.raises(IndexFormatError, match="no 'projects' list"):
        parse_index_json(b'{"meta": {"api-version": "1.4"}}')
    with pytest.raises(IndexFormatError, match="without a name"):
        parse_index_json(b'{"meta": {"api-version": "1.4"}, "projects": [{"x": 1}]}')
    with pytest.raises(IndexFormatError, match="no project links"):
        parse_index_html(b"<html><body></body></html>")
    assert parse_index_html(b'<html><body><a href="/simple/foo-bar/">Foo.Bar</a></body></html>') == ["Foo.Bar"]
    # Links may be relative or keep the display spelling (other index servers do both).
    relative = b'<html><body><a href="foo-bar/">Foo.Bar</a><a href="https://x/simple/Django/">Django</a></body></html>'
    assert parse_index_html(relative) == ["Foo.Bar", "Django"]
