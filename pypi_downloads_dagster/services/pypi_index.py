"""The PyPI simple index: fetch it (PEP 691 JSON, PEP 503 HTML as fallback) and check it is whole."""

from __future__ import annotations

import dataclasses
import json
import re

import pandas as pd

from pypi_downloads_dagster.services.http import HttpClient, HttpError, redact_url
from pypi_downloads_dagster.dataset.schema import PUBLIC_INDEX_URL, normalize_name, normalize_names

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPES = ("text/html", "application/vnd.pypi.simple.v1+html")
ACCEPT = f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"

_VALID_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)

#: More invalid entries than this share means the page is not an index (an error page, a portal).
MAX_INVALID_SHARE = 0.01


class IndexFormatError(ValueError):
    """The index answer is not a whole simple index (truncated, an error page, malformed)."""


@dataclasses.dataclass(frozen=True)
class ProjectIndex:
    """Every valid project on the index: `projects` has columns name (display), normalized, url.

    `invalid_names` lists entries dropped for an invalid name, `duplicates` how many entries
    repeated an already seen normalized name; `format` is "json" or "html".
    """

    projects: pd.DataFrame
    invalid_names: list[str]
    duplicates: int
    format: str
    last_serial: int | None = None


def fetch_index(client: HttpClient, index_url: str, *, min_projects: int = 1) -> ProjectIndex:
    """Download and parse the simple index at `index_url`.

    Raises `IndexFormatError` when the answer is not a whole index, `HttpError` when it cannot be fetched.
    """
    if not index_url.endswith("/"):
        index_url += "/"
    response = client.get(index_url, headers={"Accept": ACCEPT})
    where = redact_url(index_url)
    if response.status_code != 200:
        raise HttpError(f"GET {where} answered HTTP {response.status_code}; expected the simple index", status=response.status_code)
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type in (JSON_TYPE, "application/json"):
        names, last_serial, fmt = *parse_index_json(response.content, where), "json"
    elif content_type in HTML_TYPES:
        names, last_serial, fmt = parse_index_html(response.content, where), None, "html"
    else:
        raise IndexFormatError(f"{where} answered Content-Type {content_type or 'none'!r}, which is not a simple index")
    index = build_project_index(names, fmt=fmt, source=where, last_serial=last_serial)
    if len(index.projects) < min_projects:
        raise IndexFormatError(
            f"{where} lists {len(index.projects)} valid projects, fewer than the {min_projects} required: "
            "the index looks truncated"
        )
    return index


def parse_index_json(body: bytes, source: str = "index") -> tuple[list[str], int | None]:
    """Project display names and `_last-serial` from a PEP 691 JSON index page."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{source}: the JSON index cannot be parsed ({exc}); the body is truncated or not JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("meta"), dict) or "api-version" not in document["meta"]:
        raise IndexFormatError(f"{source}: JSON without meta.api-version is not a PEP 691 simple index")
    projects = document.get("projects")
    if not isinstance(projects, list):
        raise IndexFormatError(f"{source}: PEP 691 index has no 'projects' list")
    names = []
    for entry in projects:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise IndexFormatError(f"{source}: PEP 691 project entry without a name: {str(entry)[:100]}")
        names.append(entry["name"])
    serial = document["meta"].get("_last-serial")
    return names, serial if isinstance(serial, int) else None


def parse_index_html(body: bytes, source: str = "index") -> list[str]:
    """Project display names from a PEP 503 HTML index page (parsed with pyquery).

    A page that stops before `</html>` is a truncated answer, and a page whose links do not point
    at `<normalized name>/` is not an index (an error page or captive portal).
    """
    from pyquery import PyQuery

    text = body.decode("utf-8", errors="replace")
    tail = text.rstrip()[-200:].lower()
    if not tail.endswith("</html>"):
        raise IndexFormatError(f"{source}: the HTML index ends before </html>; the body is truncated")
    anchors = PyQuery(body, parser="html")("a")
    names = []
    mismatched = 0
    for anchor in anchors:
        name = (anchor.text or "").strip()
        href = anchor.get("href") or ""
        names.append(name)
        # The link's last path segment names the project (absolute or relative, any spelling).
        target = href.split("#")[0].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        if not target or normalize_name(target) != normalize_name(name):
            mismatched += 1
    if not names:
        raise IndexFormatError(f"{source}: the HTML page has no project links; it is not a simple index")
    if mismatched > max(1, MAX_INVALID_SHARE * len(names)):
        raise IndexFormatError(
            f"{source}: {mismatched} of {len(names)} links do not point at /simple/<project>/; "
            "the page is not a simple index (an error page or portal?)"
        )
    return names


def is_valid_name(name: str) -> bool:
    """True for a valid project name (PEP 508 / the index's rule)."""
    return bool(_VALID_NAME.match(name))


def build_project_index(names: list[str], *, fmt: str, source: str = "index", last_serial=None) -> ProjectIndex:
    """Validate names, drop invalid and repeated ones, and add normalized name and project URL."""
    frame = pd.DataFrame({"name": pd.Series(names, dtype=object)})
    valid = frame["name"].str.match(_VALID_NAME).fillna(False).astype(bool)
    invalid_names = frame.loc[~valid, "name"].tolist()
    if len(invalid_names) > max(1, MAX_INVALID_SHARE * len(names)):
        raise IndexFormatError(
            f"{source}: {len(invalid_names)} of {len(names)} entries are not valid project names "
            f"(e.g. {invalid_names[:3]!r}); this is not a simple index"
        )
    frame = frame[valid].copy()
    frame["normalized"] = normalize_names(frame["name"])
    before = len(frame)
    frame = frame.drop_duplicates("normalized", keep="first")
    # The public project URL, never the configured index URL (a mirror's, or one with credentials).
    frame["url"] = PUBLIC_INDEX_URL + frame["normalized"] + "/"
    frame = frame.sort_values("normalized", kind="stable").reset_index(drop=True)
    return ProjectIndex(frame[["name", "normalized", "url"]], invalid_names, before - len(frame), fmt, last_serial)

