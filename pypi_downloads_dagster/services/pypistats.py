"""The pypistats.org API: recent download counts (last day / week / month) per project."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Optional
from urllib.parse import quote

import pandas as pd
import requests

from pypi_downloads_dagster.services.http import BadAnswer, HttpClient, HttpError, RequestStopped, ServiceDown
from pypi_downloads_dagster.dataset.schema import COUNT_COLUMNS, EARLIEST_UPDATED_AT, MAX_COUNT, STATUS_EMPTY, STATUS_VALID, normalize_name

DEFAULT_API_URL = "https://pypistats.org/api"

#: pypistats refreshes its counts once a day, after 01:00 UTC. From 02:00 UTC one day to 02:00 the
#: next, the counts cannot change, so a project fetched in that span is never asked for again in it.
COUNTS_DAY_STARTS_AT_HOUR_UTC = 2


def counts_day_start(now: float) -> float:
    """Unix time when the current span of unchanging pypistats counts began."""
    offset = COUNTS_DAY_STARTS_AT_HOUR_UTC * 3600
    return (now - offset) // 86_400 * 86_400 + offset


def counts_day_of(fetched_at: float) -> dt.date:
    """The UTC day whose downloads a fetch at `fetched_at` got as `last_day`: the day before the
    span of counts it fell in began (pypistats refreshes after 01:00 UTC for the day before)."""
    start = dt.datetime.fromtimestamp(counts_day_start(fetched_at), tz=dt.timezone.utc).date()
    return start - dt.timedelta(days=1)


def daily_capacity(pacing_interval: float, egresses: int) -> int:
    """How many projects `egresses` paced at `pacing_interval` can fetch in a day."""
    return int(86_400 / pacing_interval) * egresses


#: Columns of a fetch result: one row per project that got an answer (valid or empty).
FETCHED_COLUMNS = ("normalized", "last_day", "last_week", "last_month", "status", "updated_at")


#: pypistats' whole answer for a package it does not know (status 404, plain text).
UNKNOWN_PACKAGE_BODY = b"404"


class UnexpectedAnswer(BadAnswer, ValueError):
    """pypistats answered 200 with a body that is not a recent-downloads document (a BadAnswer: the
    HTTP client retries it through another egress)."""


class WrongStatsEndpoint(RuntimeError):
    """The stats API does not know a project the published dataset has counts for: the API URL or
    the route through the proxies is wrong, so every answer of this run would be wrong."""


class FetchStopped(RuntimeError):
    """`fetch_many` was stopped (its `stop` event set) before every project was asked for.

    Every answer received before went to `on_result`; `result` holds them and the failures, and
    `not_asked` counts the projects never asked for. Fail the chunk with it: a re-run the same day
    asks only for what is missing."""

    def __init__(self, message: str, *, result: Optional["FetchResult"] = None, not_asked: int = 0):  # defaults: picklable
        super().__init__(message)
        self.result = result
        self.not_asked = not_asked


class BrokenClock(RuntimeError):
    """The machine's clock reads a time before pypistats existed: fetch times would be wrong."""


@dataclasses.dataclass(frozen=True)
class RecentCounts:
    normalized: str
    last_day: Optional[int]
    last_week: Optional[int]
    last_month: Optional[int]
    status: str
    updated_at: float


@dataclasses.dataclass
class FetchResult:
    """What a batch of requests produced: `fetched` rows (FETCHED_COLUMNS), and `failed`
    {normalized name: reason} for projects that still failed after retries (their rows stay as
    they were)."""

    fetched: pd.DataFrame
    failed: dict[str, str]

    @property
    def valid(self) -> int:
        return int((self.fetched["status"] == STATUS_VALID).sum())

    @property
    def empty(self) -> int:
        return int((self.fetched["status"] == STATUS_EMPTY).sum())


@dataclasses.dataclass(frozen=True)
class FetchProgress:
    """Where a `fetch_many` stands, given to its `on_status` after each project.

    `answered` projects got an answer (valid or empty), `failed` ones still failed after retries;
    `last_error` is the latest failure's reason (safe to log), None before any; `started_monotonic`
    is `time.monotonic()` when the fetch started."""

    answered: int
    failed: int
    total: int
    last_error: Optional[str]
    started_monotonic: float

    @property
    def done(self) -> int:
        return self.answered + self.failed


def recent_url(api_url: str, name: str) -> str:
    """The `recent` endpoint for a project, always by normalized name (pypistats does not lower-case)."""
    return f"{api_url.rstrip('/')}/packages/{quote(normalize_name(name), safe='')}/recent"


def parse_recent(body: bytes, normalized: str) -> tuple[int, int, int]:
    """(last_day, last_week, last_month) from a 200 body; raises UnexpectedAnswer otherwise."""
    try:
        data = json.loads(body)["data"]
        counts = tuple(data[column] for column in COUNT_COLUMNS)
    except (ValueError, KeyError, TypeError) as exc:
        raise UnexpectedAnswer(f"{normalized}: 200 answer is not a recent-downloads document: {body[:80]!r}") from exc
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise UnexpectedAnswer(f"{normalized}: counts are not non-negative integers: {counts!r}")
    # The dataset stores int64: a larger count would wedge every later read of the fetch store.
    if any(c > MAX_COUNT for c in counts):
        raise UnexpectedAnswer(f"{normalized}: counts exceed the int64 maximum {MAX_COUNT}: {counts!r}")
    return counts  # type: ignore[return-value]


def is_unknown_package(response: requests.Response) -> bool:
    """Whether `response` is pypistats' own "unknown package" answer: 404 with the bare body `404`
    (a proxy's, CDN's or other route's 404 page is not)."""
    return response.status_code == 404 and response.content.strip() == UNKNOWN_PACKAGE_BODY


def check_fetch_time(fetched_at: float, normalized: str) -> None:
    """Raise BrokenClock when `fetched_at` cannot be a real fetch time (before pypistats existed)."""
    if not (math.isfinite(fetched_at) and fetched_at >= EARLIEST_UPDATED_AT):
        raise BrokenClock(
            f"the clock reads {fetched_at!r}, before pypistats existed (Unix {EARLIEST_UPDATED_AT:.0f}, "
            f"2018-01-01 UTC): refusing to record {normalized}; fix the system clock"
        )


def fetch_recent(
    client: HttpClient,
    api_url: str,
    name: str,
    *,
    clock: Callable[[], float] = time.time,
    stop: Optional[threading.Event] = None,
) -> RecentCounts:
    """Counts for one project (asked for, and recorded, by normalized name). Only pypistats' own
    unknown-package answer (404, body `404`) means it has no data (`'empty'`). A 200 that is not
    the API's document, or any other 404 (a proxy's or CDN's page), is retried through another
    egress; anything that is still not a good answer raises HttpError (after the client's
    retries), so the project's row stays as it was. Raises BrokenClock when `clock` reads a time
    before pypistats existed; ServiceDown when the client is down; RequestStopped when `stop` was
    set before the request was sent."""
    normalized = normalize_name(name)

    def validate(response: requests.Response) -> None:
        if response.status_code == 200:
            parse_recent(response.content, normalized)
        elif response.status_code == 404 and not is_unknown_package(response):
            raise BadAnswer(
                f"{normalized}: HTTP 404 that is not pypistats' unknown-package answer "
                f"(body {response.content[:80]!r}): a proxy's or CDN's page, or the API's route changed"
            )

    response = client.get(recent_url(api_url, name), headers={"Accept": "application/json"}, validate=validate, stop=stop)
    fetched_at = clock()
    check_fetch_time(fetched_at, normalized)
    if response.status_code == 404:
        return RecentCounts(normalized, None, None, None, STATUS_EMPTY, fetched_at)
    if response.status_code != 200:
        raise HttpError(f"{normalized}: pypistats answered HTTP {response.status_code}", status=response.status_code)
    day, week, month = parse_recent(response.content, normalized)
    return RecentCounts(normalized, day, week, month, STATUS_VALID, fetched_at)


def check_canary(client: HttpClient, api_url: str, name: str, *, clock: Callable[[], float] = time.time) -> RecentCounts:
    """Ask for `name`, a project the published dataset knows to have counts, and return its counts.

    Call it before a chunk: if the stats API answers 404 for it (or has no data for it), the API URL
    or a proxy's route is wrong and every 'empty' of the run would be false, so this raises
    WrongStatsEndpoint instead. Other failures (HttpError, BrokenClock) propagate as usual.
    """
    message = f"the stats API does not know {name}: check PYPISTATS_API_URL and the proxies"
    try:
        counts = fetch_recent(client, api_url, name, clock=clock)
    except HttpError as exc:
        if exc.status == 404:
            raise WrongStatsEndpoint(message) from exc
        raise
    if counts.status == STATUS_EMPTY:
        raise WrongStatsEndpoint(message)
    return counts


#: Longest the thread calling fetch_many waits before it looks at the `stop` event again.
_WAIT_STEP = 0.05


def format_duration(seconds: float) -> str:
    """`45 s`, `7 min`, `3 h 20 min`: how long, as a person says it."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def describe_progress(status: "FetchProgress", now: float) -> str:
    """One line a person reads: done of total, answered and failed apart, rate, ETA, last error."""
    elapsed = max(now - status.started_monotonic, 1e-9)
    rate = status.done / elapsed
    left = status.total - status.done
    eta = f"about {format_duration(left / rate)} left" if rate > 0 and left else ("done" if not left else "ETA unknown")
    line = f"{status.done}/{status.total} done ({status.answered} answered, {status.failed} failed), {rate:.2f}/s, {eta}"
    return f"{line}; last error: {status.last_error}" if status.last_error else line


def fetch_many(
    client: HttpClient,
    api_url: str,
    names: Sequence[str],
    *,
    workers: Optional[int] = None,
    on_progress: Optional[Callable[[int, int, int], None]] = None,
    on_result: Optional[Callable[[RecentCounts], None]] = None,
    clock: Callable[[], float] = time.time,
    stop: Optional[threading.Event] = None,
    on_status: Optional[Callable[[FetchProgress], None]] = None,
) -> FetchResult:
    """Fetch counts for `names` concurrently; pacing comes from the client.

    `workers` defaults to two per egress, enough to keep every egress busy while a request is in
    flight. `on_result(counts)` is called with each answer as it arrives (to journal it);
    `on_progress(done, total, failed)` and `on_status(FetchProgress)` (answered and failed apart,
    the last error) after each project. Every exception of a worker, or of `on_result` (an answer
    it refused is not in `fetched`), is recorded against its project; none is dropped. Raises
    BrokenClock before any request when `clock` reads a time before pypistats existed.

    Stopping early (no new request starts; what was never asked is neither fetched nor failed):
    - the client raises ServiceDown (every egress failing for its `down_after`): once the requests
      in flight return, ServiceDown is raised; every answer received before went to `on_result`.
    - `stop` is set (a signal handler, a run termination): likewise, then FetchStopped is raised,
      holding the partial result. When every project was done anyway, the result is returned.
    - an exception reaches the calling thread while it waits (KeyboardInterrupt, Dagster's
      DagsterExecutionInterruptedError): it is re-raised at once, without waiting for the requests
      in flight; their answers are dropped, never passed to `on_result` after fetch_many left.
    """
    check_fetch_time(clock(), "any project")  # a broken clock would only spend the rate limit
    workers = workers or max(1, 2 * len(client.egresses))
    total = len(names)
    started = time.monotonic()
    results: list[RecentCounts] = []
    failed: dict[str, str] = {}
    last_error: Optional[str] = None
    lock = threading.Lock()
    halt = threading.Event()  # no new request: set by `stop`, ServiceDown, or an interrupted caller
    left = False  # the caller has left: nothing more goes to its callbacks
    down: list[ServiceDown] = []
    crashed: list[BaseException] = []
    queue = iter(names)  # workers take names from it under `lock`: a name never taken is never asked

    def one(name: str) -> None:
        nonlocal last_error
        try:
            counts = fetch_recent(client, api_url, name, clock=clock, stop=halt)
            error = None
        except RequestStopped:
            return  # not asked: neither fetched nor failed
        except ServiceDown as exc:
            with lock:
                down.append(exc)
            halt.set()
            return
        except (HttpError, UnexpectedAnswer) as exc:
            counts, error = None, str(exc)
        except Exception as exc:  # a bug must be seen, not lost: record it with its type
            counts, error = None, f"{type(exc).__name__}: {exc}"
        with lock:
            if left:
                return
            if counts is not None and on_result:
                try:
                    on_result(counts)
                except Exception as exc:  # not journaled: leave it out of `fetched` too
                    counts, error = None, f"not recorded: {type(exc).__name__}: {exc}"
            if counts is not None:
                results.append(counts)
            else:
                failed[normalize_name(name)] = error
                last_error = error
            if on_progress:
                on_progress(len(results) + len(failed), total, len(failed))
            if on_status:
                on_status(FetchProgress(len(results), len(failed), total, last_error, started))

    def work() -> None:
        try:
            while not halt.is_set():
                with lock:
                    name = next(queue, None)
                if name is None:
                    return
                one(name)
        except BaseException as exc:  # a callback's exception: stop, and raise it in the caller
            crashed.append(exc)
            halt.set()

    # Daemon threads: a worker still in a request when the caller is interrupted must not hold up
    # the process's exit; it sends nothing more and reports to no one.
    threads = [threading.Thread(target=work, name=f"pypistats-{i}", daemon=True) for i in range(min(workers, total))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(_WAIT_STEP)
                if stop is not None and stop.is_set():
                    halt.set()
    except BaseException:
        halt.set()
        with lock:
            left = True
        raise
    if crashed:
        raise crashed[0]

    result = FetchResult(_fetched_frame(results), failed)
    if down:
        raise down[0]
    if len(results) + len(failed) < total:
        raise FetchStopped(
            f"stopped: {len(results)} of {total} packages answered, {len(failed)} failed, "
            f"{total - len(results) - len(failed)} not asked",
            result=result,
            not_asked=total - len(results) - len(failed),
        )
    return result


def _fetched_frame(results: list[RecentCounts]) -> pd.DataFrame:
    """FETCHED_COLUMNS rows, sorted by name, with the dataset's column types."""
    fetched = pd.DataFrame([dataclasses.astuple(r) for r in results], columns=list(FETCHED_COLUMNS))
    for column in COUNT_COLUMNS:
        fetched[column] = fetched[column].astype("Int64")
    fetched["updated_at"] = fetched["updated_at"].astype("float64")
    fetched["status"] = fetched["status"].astype(object)
    return fetched.sort_values("normalized", kind="stable").reset_index(drop=True)
