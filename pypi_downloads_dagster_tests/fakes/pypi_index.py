"""A fake PyPI simple index (`GET /simple/`) that negotiates PEP 691 JSON / PEP 503 HTML like Warehouse.

Faults a real network produces are switchable: an old mirror without JSON, half a body, a connection
closed before the announced Content-Length, and any fixed answer (a proxy's error page, a 503).
"""

from __future__ import annotations

import html
import json
import re
import threading

from pypi_downloads_dagster_tests.fakes.server import LocalServer, QuietHandler

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_V1_TYPE = "application/vnd.pypi.simple.v1+html"
# Warehouse's offers, in its order: on equal q-values the earlier offer wins (WebOb acceptable_offers).
OFFERS = ("text/html", HTML_V1_TYPE, JSON_TYPE)
API_VERSION = "1.4"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_accept(header: str) -> list[tuple[str, float]]:
    ranges = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            ranges.append((media.lower(), q))
    return ranges


def negotiate(accept: str | None) -> str:
    """The content type Warehouse picks: best q among its offers, offer order on ties, HTML by default."""
    if not accept:
        return "text/html"
    ranges = _parse_accept(accept)
    scored = []
    for order, offer in enumerate(OFFERS):
        kind = offer.split("/")[0]
        # The most specific matching range decides the offer's q (RFC 7231 5.3.2).
        for pattern in (offer, f"{kind}/*", "*/*"):
            qs = [q for media, q in ranges if media == pattern]
            if qs:
                if qs[0] > 0:
                    scored.append((-qs[0], order, offer))
                break
    # Warehouse answers HTML when nothing is acceptable, rather than 406.
    return min(scored)[2] if scored else "text/html"


class _IndexHandler(QuietHandler):

    def do_GET(self):
        index: FakeIndex = self.server.app
        accept = self.headers.get("Accept")
        with index.lock:
            index.requests.append({"path": self.path, "accept": accept})
            override, truncate_at, truncate_mode = index.override, index.truncate_at, index.truncate_mode
        if override is not None:
            status, content_type, body = override
            self.send_body(status, body.encode() if isinstance(body, str) else body, content_type)
            return
        if self.path.split("?")[0] != "/simple/":
            self.send_body(404, b"404 Not Found", "text/plain")
            return
        content_type = negotiate(accept) if index.json_enabled else "text/html"
        body = index.render(content_type)
        headers = {"Vary": "Accept", "X-PyPI-Last-Serial": str(index.last_serial)}
        if truncate_at is None:
            self.send_body(200, body, content_type, headers)
            return
        sent = body[: int(len(body) * truncate_at)]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        # "length": a consistent but short answer (what a proxy that cut the body passes on);
        # "close": the header announces the whole body and the connection closes early.
        self.send_header("Content-Length", str(len(sent) if truncate_mode == "length" else len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(sent)
        self.close_connection = True


class FakeIndex(LocalServer):
    """`GET {url}/simple/` lists `projects` (display names). Use as a context manager.

    Settable any time: `projects`, `json_enabled`, `truncate_at` (fraction of the body sent),
    `truncate_mode` ("length" or "close"), `override` ((status, content_type, body) answered to
    every request). `requests` logs {"path", "accept"} per request.
    """

    def __init__(self, projects: list[str], serial_base: int = 1000):
        self.projects = list(projects)
        self.serial_base = serial_base
        self.json_enabled = True
        self.truncate_at: float | None = None
        self.truncate_mode = "length"
        self.override: tuple[int, str, str | bytes] | None = None
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(_IndexHandler, app=self)

    @property
    def index_url(self) -> str:
        return f"{self.url}/simple/"

    @property
    def accepts(self) -> list[str | None]:
        with self.lock:
            return [r["accept"] for r in self.requests]

    def _entries(self) -> list[tuple[int, str]]:
        # A project's serial is fixed by its position in `projects`, so serials are stable per test.
        entries = [(self.serial_base + i, name) for i, name in enumerate(self.projects)]
        return sorted(entries, key=lambda e: normalize(e[1]))

    @property
    def last_serial(self) -> int:
        return self.serial_base + len(self.projects) - 1 if self.projects else 0

    def render(self, content_type: str) -> bytes:
        entries = self._entries()
        if content_type == JSON_TYPE:
            document = {
                "meta": {"_last-serial": self.last_serial, "api-version": API_VERSION},
                "projects": [{"_last-serial": serial, "name": name} for serial, name in entries],
            }
            return json.dumps(document, separators=(",", ":")).encode()
        anchors = "".join(
            f'    <a href="/simple/{html.escape(normalize(name))}/">{html.escape(name)}</a>\n' for _, name in entries
        )
        return (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
            "    <title>Simple index</title>\n  </head>\n  <body>\n"
            f"{anchors}  </body>\n</html>\n"
        ).encode()
