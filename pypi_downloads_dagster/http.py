"""The one HTTP layer every service module shares: egresses (direct or proxies), pacing, retries.

- An *egress* is one way out to the internet: direct, or one proxy of the pool (`PP_URL`). Rate
  limits such as pypistats' are per client IP, so pacing is kept per egress.
- *Pacing* spaces requests on each egress evenly, a little below the server's limits, so a client
  never bursts past them (pypistats: 5/s and 30/min per IP; a 429 carries no Retry-After). The
  schedule can live in a file that every process on the machine shares (concurrent chunk runs).
- *Retries* (tenacity) cover 429, 5xx, connection errors, timeouts, bodies cut short and answers
  the caller's `validate` rejects (`BadAnswer`: a portal's or proxy's page); each retry leaves
  through another egress when there is one. Other statuses go back to the caller to interpret.
- Proxy credentials never appear in labels, logs or errors: egresses are named by host and port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import requests
import tenacity
from requests.adapters import HTTPAdapter

from pypi_downloads_dagster import __version__

USER_AGENT = f"pypi-downloads-dagster/{__version__} (dataset of PyPI download counts; python-requests)"

#: Share of a rate limit actually used: even spacing at 97% of the limit leaves room for network
#: jitter, so requests sent evenly never arrive faster than the server's window allows.
PACING_HEADROOM = 0.97

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class HttpError(RuntimeError):
    """A request that did not succeed after its retries (or with a status the caller rejects).

    The message names the URL (credentials removed), the egress and what went wrong; `status` is
    the last HTTP status seen, or None when no answer came.
    """

    def __init__(self, message: str, *, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class BadAnswer(Exception):
    """Raise from a `validate` callable (or a subclass of it) when an answer is not what the server
    sends: a captive portal's or proxy's page, a 200 that is not the API's document. The attempt is
    retried like a 5xx, through another egress. The message says what was wrong (safe to log)."""


class _RetryableResponse(Exception):
    def __init__(self, response: requests.Response, egress: "Egress"):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.egress = egress


class _RejectedResponse(_RetryableResponse):
    """An answer `validate` refused (`reason` is the BadAnswer's message)."""

    def __init__(self, response: requests.Response, egress: "Egress", reason: str):
        super().__init__(response, egress)
        self.reason = reason


def redact_url(url: str) -> str:
    """`url` with any user:password removed (safe to log)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclasses.dataclass(frozen=True)
class Egress:
    """One way out: `proxy_url` None means direct. `label` is safe to log (never holds credentials)."""

    label: str
    proxy_url: Optional[str] = dataclasses.field(default=None, repr=False)


DIRECT = Egress("direct")


def parse_proxy_pool(value: Optional[str]) -> list[Egress]:
    """Egresses from `PP_URL`: comma-separated proxy URLs; empty or None means one direct egress.

    Raises ValueError (without echoing credentials) for a URL that is not an http(s) proxy.
    """
    urls = [part.strip() for part in (value or "").split(",") if part.strip()]
    if not urls:
        return [DIRECT]
    egresses = []
    for position, url in enumerate(urls, start=1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"PP_URL entry {position} ({redact_url(url)!r}) is not a proxy URL like http://user:pass@host:port"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:  # a port that is not a number
            raise ValueError(f"PP_URL entry {position} ({redact_url(url)!r}) has an invalid port") from exc
        egresses.append(Egress(f"proxy-{position} {parts.hostname}:{port}", url))
    return egresses


@dataclasses.dataclass(frozen=True)
class Pacing:
    """Rate limits to stay below, per egress."""

    max_per_second: float
    max_per_minute: float

    def __post_init__(self):
        if self.max_per_second <= 0 or self.max_per_minute <= 0:
            raise ValueError(f"pacing limits must be positive, got {self.max_per_second}/s and {self.max_per_minute}/min")

    @property
    def interval(self) -> float:
        """Seconds between two requests on one egress."""
        return max(1.0 / self.max_per_second, 60.0 / self.max_per_minute) / PACING_HEADROOM


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. Tests scale the waits down."""

    attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 60.0
    timeout: float = 30.0
    #: How long an egress rests after a 429. pypistats sends no Retry-After and counts in fixed
    #: windows of up to a minute: asking again at once would only be refused again.
    rate_limited_wait: float = 10.0


class _Slots:
    """Per-egress schedule of when the next request may leave (thread-safe).

    `reserve` hands out the earliest slot over all egresses and books it, so concurrent workers
    spread over the pool and no egress ever gets two requests closer than the pacing interval.
    With `shared_file`, the schedule lives in that file under an exclusive lock, so every process
    on the machine (concurrent chunk runs) paces each egress together, not each on its own.
    """

    def __init__(
        self,
        egresses: Sequence[Egress],
        pacing: Optional[Pacing],
        clock: Callable[[], float],
        shared_file: Optional[Path] = None,
    ):
        self._egresses = list(egresses)
        self._pacing = pacing
        self._clock = clock
        self._next_free = {egress.label: 0.0 for egress in self._egresses}
        self._lock = threading.Lock()
        self._shared_file = shared_file
        if shared_file is not None:
            shared_file.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _booking(self):
        """Hold the schedule for one read-modify-write."""
        with self._lock:
            if self._shared_file is None:
                yield self._next_free
                return
            with open(self._shared_file, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
                handle.seek(0)
                try:
                    schedule = {**self._next_free, **json.loads(handle.read() or "{}")}
                except ValueError:  # a torn file from a crash: start the schedule afresh
                    schedule = dict(self._next_free)
                yield schedule
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(schedule))

    def reserve(self, avoid: Optional[Egress] = None) -> tuple[Egress, float]:
        with self._booking() as schedule:
            now = self._clock()
            candidates = [e for e in self._egresses if e != avoid] or self._egresses
            egress = min(candidates, key=lambda e: schedule.get(e.label, 0.0))
            start = max(now, schedule.get(egress.label, 0.0))
            if self._pacing is not None:
                schedule[egress.label] = start + self._pacing.interval
            return egress, start

    def cool_down(self, egress: Egress, seconds: float) -> None:
        """Keep `egress` idle for `seconds` (after a 429: the server's window is still full)."""
        with self._booking() as schedule:
            schedule[egress.label] = max(schedule.get(egress.label, 0.0), self._clock() + seconds)


class HttpClient:
    """GET over a pool of egresses with optional pacing and retries. One instance per service.

    Thread-safe: workers may share one client; each thread keeps its own session per egress.
    """

    def __init__(
        self,
        egresses: Sequence[Egress] = (DIRECT,),
        *,
        pacing: Optional[Pacing] = None,
        retry: RetryPolicy = RetryPolicy(),
        user_agent: str = USER_AGENT,
        shared_pacing_file: Optional[Path] = None,
        clock: Optional[Callable[[], float]] = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not egresses:
            raise ValueError("at least one egress is needed")
        self.egresses = list(egresses)
        self.pacing = pacing
        self.retry = retry
        self.user_agent = user_agent
        # Processes sharing a schedule need one clock: wall time. Alone, monotonic time is safer.
        self._clock = clock or (time.time if shared_pacing_file else time.monotonic)
        self._sleep = sleep
        self._slots = _Slots(self.egresses, pacing, self._clock, shared_pacing_file)
        self._local = threading.local()

    def _session(self, egress: Egress) -> requests.Session:
        sessions = self._local.__dict__.setdefault("sessions", {})
        session = sessions.get(egress)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            adapter = HTTPAdapter(max_retries=0)  # retries are ours, with pacing
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if egress.proxy_url:
                session.proxies = {"http": egress.proxy_url, "https": egress.proxy_url}
                session.trust_env = False  # the pool decides the route, not *_PROXY variables
            sessions[egress] = session
        return session

    def get(
        self,
        url: str,
        *,
        headers: Optional[dict] = None,
        validate: Optional[Callable[[requests.Response], None]] = None,
    ) -> requests.Response:
        """GET `url`, retrying retryable failures; returns the final response for any other status.

        `validate(response)` is called on every answer that is not retried for its status (any
        status, 200 included); when it raises `BadAnswer` (or a subclass), that attempt counts as
        failed and is retried through another egress, with backoff. Any other exception from it
        propagates at once.

        Raises `HttpError` when every attempt failed; its message is safe to log. After a last
        answer `validate` refused, the message holds the BadAnswer's text and the egress, and
        `status` is that answer's status (the BadAnswer is the `__cause__`).
        """
        state = {"avoid": None, "egress": None}

        def attempt() -> requests.Response:
            egress, start = self._slots.reserve(avoid=state["avoid"])
            state["egress"] = egress
            delay = start - self._clock()
            if delay > 0:
                self._sleep(delay)
            try:
                response = self._session(egress).get(url, headers=headers, timeout=self.retry.timeout)
                _ = response.content  # read the whole body now: a cut-off body is retryable
            except requests.RequestException:
                state["avoid"] = egress
                raise
            if response.status_code in RETRYABLE_STATUSES:
                state["avoid"] = egress
                if response.status_code == 429:
                    self._slots.cool_down(egress, self.retry.rate_limited_wait)
                raise _RetryableResponse(response, egress)
            if validate is not None:
                try:
                    validate(response)
                except BadAnswer as exc:
                    state["avoid"] = egress  # most likely that egress's page, not the server's answer
                    raise _RejectedResponse(response, egress, str(exc)) from exc
            return response

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry.attempts),
            wait=tenacity.wait_exponential_jitter(initial=self.retry.initial_wait, max=self.retry.max_wait),
            retry=tenacity.retry_if_exception_type((requests.RequestException, _RetryableResponse)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _RejectedResponse as exc:
            raise HttpError(
                f"GET {redact_url(url)} failed after {self.retry.attempts} attempts: last answer "
                f"HTTP {exc.response.status_code} via {exc.egress.label} was rejected: "
                f"{_USERINFO.sub('***@', exc.reason)[:300]}",
                status=exc.response.status_code,
            ) from exc.__cause__
        except _RetryableResponse as exc:
            raise HttpError(
                f"GET {redact_url(url)} failed after {self.retry.attempts} attempts: last answer "
                f"HTTP {exc.response.status_code} via {exc.egress.label}",
                status=exc.response.status_code,
            ) from None
        except requests.RequestException as exc:
            raise HttpError(
                f"GET {redact_url(url)} failed after {self.retry.attempts} attempts: last error "
                f"{_describe(exc)} via {state['egress'].label}"
            ) from None


_USERINFO = re.compile(r"(?<=//)[^/@\s'\"]+@")


def _describe(exc: requests.RequestException) -> str:
    """The transport error in one line, with any user:password@ scrubbed (proxy URLs may carry them)."""
    text = _USERINFO.sub("***@", str(exc))
    return f"{type(exc).__name__}: {text[:300]}"
