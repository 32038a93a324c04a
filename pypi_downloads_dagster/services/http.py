"""The one HTTP layer every service module shares: egresses (direct or proxies), pacing, retries.

- An *egress* is one way out to the internet: direct, or one proxy of the pool (`PP_URL`). Rate
  limits such as pypistats' are per client IP, so pacing is kept per egress.
- *Pacing* spaces requests on each egress evenly, a little below the server's limits, so a client
  never bursts past them (pypistats: 5/s and 30/min per IP; a 429 carries no Retry-After). Pacing
  is in-process: with several processes, a `gate` says which egresses this one may use now (the
  egress leases in `leases.py`), so no two processes ever send through one egress.
- *Retries* (tenacity) cover 429, 5xx, connection errors, timeouts, bodies cut short and answers
  the caller's `validate` rejects (`BadAnswer`: a portal's or proxy's page); each retry leaves
  through another egress when there is one. Other statuses go back to the caller to interpret.
- A *breaker* keeps, per egress, the streak of "the world is down" failures (connection errors,
  timeouts, 5xx, rejected answers) until its next good answer. A failing egress gets one request at
  a time, after a backoff, so the others carry the work and it is noticed when it comes back; once
  every egress has been failing for `RetryPolicy.down_after`, every call raises `ServiceDown`.
- Proxy credentials never appear in labels, logs or errors: egresses are named by host and port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Optional, Protocol
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


class ServiceDown(HttpError):
    """Every egress has been failing (connection errors, timeouts, 5xx, answers `validate`
    refused) without one good answer for at least `RetryPolicy.down_after` seconds: the service or
    the way to it is down. From then on every call of the client, in flight or new, raises it
    promptly; a client that went down stays down (make a new client to try again).

    The message (safe to log) says how long every egress has been failing and names the last
    error: URL without credentials, egress by its label. `last_error` holds that error alone and
    `failing_for` the seconds every egress had been failing when the client went down.
    """

    def __init__(self, message: str, *, last_error: str = "", failing_for: float = 0.0):  # defaults: picklable
        super().__init__(message)
        self.last_error = last_error
        self.failing_for = failing_for


class RequestStopped(Exception):
    """`get` found its `stop` event set before an attempt: nothing more was sent. Not an HttpError:
    the request did not fail, it was not made."""


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
    # Errors name the entry by position only: any part of it may be a secret.
    expected = "is not a proxy URL like http://user:pass@host:port (percent-encode '#', '/', '?' and '@' in the user and password)"
    for position, url in enumerate(urls, start=1):
        parts = urlsplit(url)
        # A path, query or fragment means a reserved character split the URL (a '#' in a password):
        # the host read from it would be wrong, and a label built from it could show the password.
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"PP_URL entry {position} {expected}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port that is not a number
            raise ValueError(f"PP_URL entry {position} has a port that is not a number; it {expected}") from None
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
    #: Seconds every egress must have been failing (connection errors, timeouts, 5xx, rejected
    #: answers; not 429 nor 404), without one good answer, before the client raises ServiceDown
    #: instead of retrying on. `math.inf`: never.
    down_after: float = 60.0


class EgressGate(Protocol):
    """Which egresses a client may send through now, by label (see `leases.EgressLeases`)."""

    def held(self) -> Collection[str]: ...


class _Slots:
    """Per-egress schedule of when the next request may leave (thread-safe).

    `reserve` hands out the earliest slot over all egresses and books it, so concurrent workers
    spread over the pool and no egress ever gets two requests closer than the pacing interval.
    """

    def __init__(self, egresses: Sequence[Egress], pacing: Optional[Pacing], clock: Callable[[], float]):
        self._egresses = list(egresses)
        self._pacing = pacing
        self._clock = clock
        self._next_free = {egress.label: 0.0 for egress in self._egresses}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _booking(self):
        """Hold the schedule for one read-modify-write."""
        with self._lock:
            yield self._next_free

    def reserve(
        self, avoid: Optional[Egress] = None, *, among: Optional[Sequence[Egress]] = None, first: Collection[Egress] = ()
    ) -> tuple[Egress, float]:
        """Book the earliest slot over `among` (default: every egress), not on `avoid` when another
        is left; of slots free as soon, one of `first` wins, then the egress idle the longest."""
        with self._booking() as schedule:
            now = self._clock()
            pool = list(among) if among is not None else self._egresses
            candidates = [e for e in pool if e != avoid] or pool
            egress = min(
                candidates,
                key=lambda e: (max(now, schedule.get(e.label, 0.0)), e not in first, schedule.get(e.label, 0.0)),
            )
            start = max(now, schedule.get(egress.label, 0.0))
            if self._pacing is not None:
                schedule[egress.label] = start + self._pacing.interval
            return egress, start

    def resting(self) -> dict[str, float]:
        """{label: seconds until the egress may send again} for every egress not free now."""
        with self._booking() as schedule:
            now = self._clock()
            return {label: until - now for label, until in schedule.items() if until > now}

    def cool_down(self, egress: Egress, seconds: float) -> None:
        """Keep `egress` idle for `seconds` (after a 429: the server's window is still full)."""
        with self._booking() as schedule:
            schedule[egress.label] = max(schedule.get(egress.label, 0.0), self._clock() + seconds)


#: Longest a waiting worker sleeps before it looks again at the breaker and at its stop event.
_POLL = 0.05


class _Breaker:
    """Per-egress streaks of failures of the "the world is down" kind (thread-safe).

    An egress is *failing* from its first failure until its next good answer. A failing egress gets
    at most one request at a time (a probe), so a dead one never holds more than one worker and is
    noticed when it comes back. The client is *down* once every egress has been failing for
    `down_after` seconds; that lasts.
    """

    def __init__(self, egresses: Sequence[Egress], down_after: float):
        # Notified when a probe ends, an egress answers well, or the client goes down.
        self.changed = threading.Condition()
        self._egresses = list(dict.fromkeys(egresses))  # an egress listed twice is still one way out
        self._down_after = down_after
        self._since: dict[Egress, float] = {}  # monotonic time of the first failure of the streak
        self._streak: dict[Egress, int] = {}
        self._probing: set[Egress] = set()
        self._last_error = ""
        self._down: Optional[tuple[str, float]] = None  # (message, failing_for) once down

    def check(self, among: Optional[Collection[Egress]] = None) -> None:
        """Raise ServiceDown when the client is down (or has just been failing long enough):
        every egress of `among` (default: all; the ones the client may use now) failing."""
        with self.changed:
            pool = [e for e in self._egresses if among is None or e in among]
            if self._down is None and pool and all(e in self._since for e in pool):
                failing_for = time.monotonic() - max(self._since[e] for e in pool)
                if failing_for >= self._down_after:
                    message = (
                        f"every egress ({len(pool)}) has been failing for {failing_for:.1f}s or more "
                        f"without a good answer (down_after={self._down_after:g}s); last error: {self._last_error}"
                    )
                    self._down = (message, failing_for)
                    self.changed.notify_all()
            if self._down is not None:
                # A new exception per raise: one instance raised in many threads would mix tracebacks.
                raise ServiceDown(self._down[0], last_error=self._last_error, failing_for=self._down[1])

    def usable(self, among: Optional[Collection[Egress]] = None) -> tuple[list[Egress], list[Egress]]:
        """(egresses of `among` that may take a request now, the failing ones among them: free to probe)."""
        with self.changed:
            pool = [e for e in self._egresses if among is None or e in among]
            probes = [e for e in pool if e in self._since and e not in self._probing]
            return [e for e in pool if e not in self._since or e in probes], probes

    def start_probe(self, egress: Egress) -> bool:
        """Mark a request to a failing `egress` in flight; False when it is not failing."""
        with self.changed:
            if egress not in self._since:
                return False
            self._probing.add(egress)
            return True

    def end_probe(self, egress: Egress) -> None:
        with self.changed:
            self._probing.discard(egress)
            self.changed.notify_all()

    def failed(self, egress: Egress, error: str) -> int:
        """Count a failure on `egress` (`error` is safe to log); returns the length of its streak."""
        with self.changed:
            self._since.setdefault(egress, time.monotonic())
            self._streak[egress] = self._streak.get(egress, 0) + 1
            self._last_error = error
            return self._streak[egress]

    def answered(self, egress: Egress) -> None:
        with self.changed:
            if self._since.pop(egress, None) is not None:
                self._streak.pop(egress, None)
                self.changed.notify_all()


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
        gate: Optional[EgressGate] = None,
        clock: Optional[Callable[[], float]] = None,
        sleep: Optional[Callable[[float], None]] = None,
    ):
        """`sleep` None (the default) waits in short steps that notice at once a client gone down
        or a `stop` set; a given `sleep` is used as is and both are looked at after it.

        With a `gate`, a request leaves only through an egress the gate holds now; while it holds
        none, requests wait. The client goes down when every egress it holds has been failing."""
        if not egresses:
            raise ValueError("at least one egress is needed")
        self.egresses = list(egresses)
        self.pacing = pacing
        self.retry = retry
        self.user_agent = user_agent
        self._clock = clock or time.monotonic
        self._sleep = sleep
        self._gate = gate
        self._slots = _Slots(self.egresses, pacing, self._clock)
        self._breaker = _Breaker(self.egresses, retry.down_after)
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

    def resting(self) -> dict[str, float]:
        """{egress label: seconds until its pacing (or a 429's rest) lets it send again}: what the
        next user of an egress must wait when this client gives it up."""
        return self._slots.resting()

    def _allowed(self) -> Optional[list[Egress]]:
        """The egresses the gate lets this client use now (None: no gate, every egress)."""
        if self._gate is None:
            return None
        held = self._gate.held()
        return [e for e in self.egresses if e.label in held]

    def _halt_check(self, stop: Optional[threading.Event]) -> None:
        """Raise ServiceDown when the client is down, RequestStopped when `stop` is set."""
        self._breaker.check(self._allowed())
        if stop is not None and stop.is_set():
            raise RequestStopped("stopped before sending")

    def _pause(self, seconds: float, stop: Optional[threading.Event]) -> None:
        """Wait `seconds`, but raise as soon as the client goes down or `stop` is set."""
        if self._sleep is not None:
            if seconds > 0:
                self._sleep(seconds)
            self._halt_check(stop)
            return
        deadline = time.monotonic() + seconds
        with self._breaker.changed:
            while True:
                self._halt_check(stop)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._breaker.changed.wait(min(remaining, _POLL))

    def _claim(self, avoid: Optional[Egress], stop: Optional[threading.Event]) -> tuple[Egress, float, bool]:
        """Book a slot: (egress, when it may leave, whether it is a probe of a failing egress).

        A failing egress is a candidate only when no probe of it is in flight; its backoff lives in
        the schedule, so it wins only once that has passed. With every egress failing and probed,
        wait for a probe to end (or the client to go down); with none held (a gate), for one.
        """
        with self._breaker.changed:
            while True:
                self._halt_check(stop)
                usable, probes = self._breaker.usable(self._allowed())
                if usable:
                    egress, start = self._slots.reserve(avoid, among=usable, first=probes)
                    return egress, start, self._breaker.start_probe(egress)
                self._breaker.changed.wait(_POLL)

    def _failed(self, egress: Egress, error: str) -> None:
        """A failure of the "the world is down" kind: the egress rests a backoff that doubles per
        failure in a row, so a dead one is only probed now and then."""
        streak = self._breaker.failed(egress, error)
        self._slots.cool_down(egress, min(self.retry.max_wait, self.retry.initial_wait * 2 ** min(streak - 1, 30)))

    def get(
        self,
        url: str,
        *,
        headers: Optional[dict] = None,
        validate: Optional[Callable[[requests.Response], None]] = None,
        stop: Optional[threading.Event] = None,
    ) -> requests.Response:
        """GET `url`, retrying retryable failures; returns the final response for any other status.

        `validate(response)` is called on every answer that is not retried for its status (any
        status, 200 included); when it raises `BadAnswer` (or a subclass), that attempt counts as
        failed and is retried through another egress, with backoff. Any other exception from it
        propagates at once.

        Raises `HttpError` when every attempt failed; its message is safe to log. After a last
        answer `validate` refused, the message holds the BadAnswer's text and the egress, and
        `status` is that answer's status (the BadAnswer is the `__cause__`).

        Raises `ServiceDown` (an HttpError) as soon as every egress has been failing for
        `RetryPolicy.down_after`, even while waiting to retry. When `stop` is set, no further attempt
        starts and `RequestStopped` is raised; an attempt already sent finishes (within the timeout).
        """
        state = {"avoid": None, "egress": None}
        where = redact_url(url)

        def attempt() -> requests.Response:
            egress, start, probe = self._claim(state["avoid"], stop)
            state["egress"] = egress
            try:
                self._pause(start - self._clock(), stop)
                try:
                    response = self._session(egress).get(url, headers=headers, timeout=self.retry.timeout)
                    _ = response.content  # read the whole body now: a cut-off body is retryable
                except requests.RequestException as exc:
                    state["avoid"] = egress
                    self._failed(egress, f"GET {where}: {_describe(exc)} via {egress.label}")
                    raise
                if response.status_code in RETRYABLE_STATUSES:
                    state["avoid"] = egress
                    if response.status_code == 429:  # the rate limit, not an outage: the egress rests
                        self._slots.cool_down(egress, self.retry.rate_limited_wait)
                    elif response.status_code >= 500 or response.status_code == 408:
                        self._failed(egress, f"GET {where}: HTTP {response.status_code} via {egress.label}")
                    raise _RetryableResponse(response, egress)
                if validate is not None:
                    try:
                        validate(response)
                    except BadAnswer as exc:
                        state["avoid"] = egress  # most likely that egress's page, not the server's answer
                        reason = _USERINFO.sub("***@", str(exc))[:300]
                        self._failed(egress, f"GET {where}: HTTP {response.status_code} rejected: {reason} via {egress.label}")
                        raise _RejectedResponse(response, egress, str(exc)) from exc
                self._breaker.answered(egress)
                return response
            finally:
                if probe:
                    self._breaker.end_probe(egress)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry.attempts),
            wait=tenacity.wait_exponential_jitter(initial=self.retry.initial_wait, max=self.retry.max_wait),
            retry=tenacity.retry_if_exception_type((requests.RequestException, _RetryableResponse)),
            sleep=lambda seconds: self._pause(seconds, stop),
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
