"""A fake pypistats.org serving `GET /api/packages/{name}/recent` with the real site's quirks and limits.

Reproduced from pypistats.org's source (psf/pypistats.org: views/api.py, views/error.py, run.py):
- the path name only has `.` and `_` turned into `-` (no lower-casing; `__all__` is left alone);
- `?period=day|week|month` filters, any other period is a 404; the JSON is Flask's `jsonify`
  (sorted keys, compact, trailing newline) and `package` echoes the rewritten name;
- errors are bare strings with Flask's default `text/html` type: 404 -> `404`, 429 -> the etiquette link;
- `Limiter(get_remote_address, default_limits=["5 per second", "30 per minute"])`: Flask-Limiter 3.12
  with `limits` 5.5, fixed-window strategy, in-memory storage, no rate-limit headers (no Retry-After).
"""

from __future__ import annotations

import json
import threading
import time
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from pypi_downloads_dagster_tests.fakes.server import LocalServer, QuietHandler

PERIODS = ("day", "week", "month")
HTML = "text/html; charset=utf-8"
RATE_LIMIT_BODY = b'<a href="/api/#etiquette">429 RATE LIMIT EXCEEDED</a>'
# pypistats' own handlers for 500/503; other 5xx come from the front proxy, not the app.
ERROR_BODIES = {404: b"404", 429: RATE_LIMIT_BODY, 500: b"500", 503: b"503 TEMPORARILY DISABLED"}
# A 404 page as a CDN or proxy in front of the API sends it: not pypistats' bare `404`.
FOREIGN_404_BODY = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"


def server_name(name: str) -> str:
    """The name pypistats looks up for a path segment."""
    return name if name == "__all__" else name.replace(".", "-").replace("_", "-")


class LoggedRequest(NamedTuple):
    time: float  # time.monotonic() when the request arrived
    client_ip: str
    path: str
    status: int | None  # None: the connection was dropped without an answer


class _FixedWindow:
    """`limits.FixedWindowRateLimiter` over `MemoryStorage`: the window opens at the first hit and its
    expiry is never pushed back; `hit` always increments, even past the limit."""

    def __init__(self):
        self.counters: dict[object, list[float]] = {}  # key -> [count, expires_at]

    def hit(self, key, amount: int, window: float, now: float) -> bool:
        counter = self.counters.get(key)
        if counter is None or counter[1] <= now:
            counter = self.counters[key] = [0, now + window]
        counter[0] += 1
        return counter[0] <= amount


class _PypistatsHandler(QuietHandler):

    def do_GET(self):
        stats: FakePypistats = self.server.app
        self.arrived = time.monotonic()
        split = urlsplit(self.path)
        parts = split.path.split("/")
        # Flask's route `/api/packages/<package>/recent`: exactly one non-empty segment, no trailing slash.
        if len(parts) != 5 or parts[:3] != ["", "api", "packages"] or parts[4] != "recent" or not parts[3]:
            self._answer(stats, 404, ERROR_BODIES[404], HTML)
            return
        name = server_name(unquote(parts[3]))
        # Flask-Limiter runs before the view, so every routed request counts (404s included); an injected
        # fault stands for a failure behind the limiter, so a refused request does not use one up.
        with stats.lock:
            allowed = stats._check_limits(self.client_address[0], self.arrived)
            fault = stats._next_fault(name) if allowed else None
        if not allowed:
            self._answer(stats, 429, RATE_LIMIT_BODY, HTML)
        elif fault == "drop":
            stats._log(self.arrived, self.client_address[0], self.path, None)
            self.close_connection = True  # the server closes the socket without a byte of answer
        elif isinstance(fault, tuple):  # an answer that is not pypistats' own: (kind, status, body, type)
            self._answer(stats, fault[1], fault[2], fault[3])
        elif fault is not None:
            self._answer(stats, fault, ERROR_BODIES.get(fault, f"<html><body><h1>{fault}</h1></body></html>".encode()), HTML)
        else:
            self._recent(stats, name, parse_qs(split.query, keep_blank_values=True).get("period", [None])[0])

    def _recent(self, stats: FakePypistats, name: str, period: str | None) -> None:
        counts = stats.counts.get(name)
        if counts is None or (period is not None and period not in PERIODS):
            self._answer(stats, 404, ERROR_BODIES[404], HTML)
            return
        data = {f"last_{p}": n for p, n in zip(PERIODS, counts) if period in (None, p)}
        document = {"data": data, "package": name, "type": "recent_downloads"}
        body = (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode()
        self._answer(stats, 200, body, "application/json")

    def _answer(self, stats: FakePypistats, status: int, body: bytes, content_type: str) -> None:
        stats._log(self.arrived, self.client_address[0], self.path, status)
        self.send_body(status, body, content_type)


class FakePypistats(LocalServer):
    """pypistats.org's recent-downloads API on `{url}/api`. Use as a context manager.

    `counts` maps pypistats' names (lower-case, normalized) to (last_day, last_week, last_month);
    it may be changed any time. Window lengths are parameters so tests can scale time down.
    """

    def __init__(self, counts: dict[str, tuple[int, int, int]], per_second: int = 5, per_minute: int = 30,
                 second_window: float = 1.0, minute_window: float = 60.0):
        self.counts = dict(counts)
        # Flask-Limiter evaluates limits sorted by granularity (second before minute) and stops at the
        # first breach: a request refused by the per-second limit is not counted by the per-minute one,
        # while one refused by the per-minute limit has already been counted by the per-second one.
        self.limits = [(per_second, second_window), (per_minute, minute_window)]
        self.lock = threading.Lock()
        self._windows = _FixedWindow()
        self._faults: dict[str, list] = {}
        self._log_entries: list[LoggedRequest] = []
        super().__init__(_PypistatsHandler, app=self)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    # -- fault injection: queued per package (server-side name), consumed one per request in order --

    def fail(self, name: str, statuses: list[int]) -> None:
        """The next requests for `name` answer these statuses in order, then normal answers resume."""
        with self.lock:
            self._faults.setdefault(server_name(name), []).extend(statuses)

    def drop(self, name: str, times: int = 1) -> None:
        """The next `times` requests for `name` get the connection closed without an answer."""
        with self.lock:
            self._faults.setdefault(server_name(name), []).extend(["drop"] * times)

    def garbage(self, name: str, times: int = 1, body: bytes = b"<html><body>Service Unavailable</body></html>",
                content_type: str = "text/html") -> None:
        """The next `times` requests for `name` answer 200 with a body that is not the API's JSON."""
        with self.lock:
            self._faults.setdefault(server_name(name), []).extend([("garbage", 200, body, content_type)] * times)

    def foreign_404(self, name: str, times: int = 1, body: bytes = FOREIGN_404_BODY, content_type: str = HTML) -> None:
        """The next `times` requests for `name` answer 404 with a page that is not pypistats' bare
        `404` (a CDN's or proxy's page, as a route change or a broken front end would give)."""
        with self.lock:
            self._faults.setdefault(server_name(name), []).extend([("foreign_404", 404, body, content_type)] * times)

    def reset_limits(self) -> None:
        with self.lock:
            self._windows = _FixedWindow()

    # -- request log --

    @property
    def log(self) -> list[LoggedRequest]:
        with self.lock:
            return list(self._log_entries)

    def requests_for(self, name: str) -> list[LoggedRequest]:
        """Requests whose path names `name` as the server sees it (so `zope.interface` ~ `zope-interface`,
        but `Django` != `django`)."""
        wanted = server_name(name)
        return [r for r in self.log if _path_name(r.path) == wanted]

    def client_ips(self) -> set[str]:
        return {r.client_ip for r in self.log}

    def max_requests_in_window(self, client_ip: str, seconds: float) -> int:
        """The most requests (any status) `client_ip` made in any sliding interval of `seconds`.

        Stricter than the server's fixed windows: a client can legally reach twice the limit in a
        sliding interval that straddles two fixed windows."""
        times = sorted(r.time for r in self.log if r.client_ip == client_ip)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= seconds:
                start += 1
            best = max(best, end - start + 1)
        return best

    # -- used by the handler (limits and faults are read under self.lock) --

    def _check_limits(self, client_ip: str, now: float) -> bool:
        for index, (amount, window) in enumerate(self.limits):
            if not self._windows.hit((client_ip, index), amount, window, now):
                return False
        return True

    def _next_fault(self, name: str):
        queue = self._faults.get(name)
        return queue.pop(0) if queue else None

    def _log(self, arrived: float, client_ip: str, path: str, status: int | None) -> None:
        with self.lock:
            self._log_entries.append(LoggedRequest(arrived, client_ip, path, status))


def _path_name(path: str) -> str | None:
    parts = urlsplit(path).path.split("/")
    return server_name(unquote(parts[3])) if len(parts) == 5 else None
