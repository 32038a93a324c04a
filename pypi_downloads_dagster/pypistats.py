"""The pypistats.org API: recent download counts (last day / week / month) per project."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional
from urllib.parse import quote

import pandas as pd

from pypi_downloads_dagster.http import HttpClient, HttpError
from pypi_downloads_dagster.schema import COUNT_COLUMNS, STATUS_EMPTY, STATUS_VALID, normalize_name

DEFAULT_API_URL = "https://pypistats.org/api"

#: pypistats refreshes its counts once a day, after 01:00 UTC. From 02:00 UTC one day to 02:00 the
#: next, the counts cannot change, so a project fetched in that span is never asked for again in it.
COUNTS_DAY_STARTS_AT_HOUR_UTC = 2


def counts_day_start(now: float) -> float:
    """Unix time when the current span of unchanging pypistats counts began."""
    offset = COUNTS_DAY_STARTS_AT_HOUR_UTC * 3600
    return (now - offset) // 86_400 * 86_400 + offset


def daily_capacity(pacing_interval: float, egresses: int) -> int:
    """How many projects `egresses` paced at `pacing_interval` can fetch in a day."""
    return int(86_400 / pacing_interval) * egresses


#: Columns of a fetch result: one row per project that got an answer (valid or empty).
FETCHED_COLUMNS = ("normalized", "last_day", "last_week", "last_month", "status", "updated_at")


class UnexpectedAnswer(ValueError):
    """pypistats answered 200 with a body that is not a recent-downloads document."""


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
    return counts  # type: ignore[return-value]


def fetch_recent(client: HttpClient, api_url: str, name: str, *, clock: Callable[[], float] = time.time) -> RecentCounts:
    """Counts for one project (asked for, and recorded, by normalized name). 404 means pypistats
    has no data (`'empty'`); anything else that is not a good 200 raises (HttpError after the
    client's retries, or UnexpectedAnswer)."""
    normalized = normalize_name(name)
    response = client.get(recent_url(api_url, name), headers={"Accept": "application/json"})
    fetched_at = clock()
    if response.status_code == 404:
        return RecentCounts(normalized, None, None, None, STATUS_EMPTY, fetched_at)
    if response.status_code != 200:
        raise HttpError(f"{normalized}: pypistats answered HTTP {response.status_code}", status=response.status_code)
    day, week, month = parse_recent(response.content, normalized)
    return RecentCounts(normalized, day, week, month, STATUS_VALID, fetched_at)


def fetch_many(
    client: HttpClient,
    api_url: str,
    names: Sequence[str],
    *,
    workers: Optional[int] = None,
    on_progress: Optional[Callable[[int, int, int], None]] = None,
    on_result: Optional[Callable[[RecentCounts], None]] = None,
    clock: Callable[[], float] = time.time,
) -> FetchResult:
    """Fetch counts for `names` concurrently; pacing comes from the client.

    `workers` defaults to two per egress, enough to keep every egress busy while a request is in
    flight. `on_result(counts)` is called with each answer as it arrives (to journal it) and
    `on_progress(done, total, failed)` after each project. Every exception of a worker is recorded
    against its project; none is dropped.
    """
    workers = workers or max(1, 2 * len(client.egresses))
    results: list[RecentCounts] = []
    failed: dict[str, str] = {}
    lock = threading.Lock()
    done = 0

    def one(name: str) -> None:
        nonlocal done
        try:
            counts = fetch_recent(client, api_url, name, clock=clock)
            error = None
        except (HttpError, UnexpectedAnswer) as exc:
            counts, error = None, str(exc)
        except Exception as exc:  # a bug must be seen, not lost: record it with its type
            counts, error = None, f"{type(exc).__name__}: {exc}"
        with lock:
            if counts is not None:
                results.append(counts)
                if on_result:
                    on_result(counts)
            else:
                failed[normalize_name(name)] = error
            done += 1
            if on_progress:
                on_progress(done, len(names), len(failed))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pypistats") as pool:
        list(pool.map(one, names))

    fetched = pd.DataFrame([dataclasses.astuple(r) for r in results], columns=list(FETCHED_COLUMNS))
    for column in COUNT_COLUMNS:
        fetched[column] = fetched[column].astype("Int64")
    fetched["updated_at"] = fetched["updated_at"].astype("float64")
    fetched["status"] = fetched["status"].astype(object)
    fetched = fetched.sort_values("normalized", kind="stable").reset_index(drop=True)
    return FetchResult(fetched, failed)
