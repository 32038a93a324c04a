"""PyPI download counts in bulk from ClickPy's public ClickHouse (one query for every project).

ClickPy (https://clickpy.clickhouse.com) loads PyPI's download logs into ClickHouse and serves them
read-only at `https://sql-clickhouse.clickhouse.com` (user `demo`, no password). Its table
`pypi.pypi_downloads_per_day_by_version_by_installer_by_type` has one row per project, version,
day, installer and file type (a SummingMergeTree: rows for one key may not be merged yet, so every
read aggregates with `sum(count)`).

This module speaks ClickHouse's HTTP interface with `requests` (POST the SQL, read the answer as an
Arrow IPC stream with pyarrow) and computes pypistats' "recent" counts from it
(REFERENCE.md section 7): mirrors excluded, D = the last complete UTC day, `last_day` = D,
`last_week` = D-6..D, `last_month` = D-29..D, and a project with no downloads in those 30 days has
no row at all.

Names: ClickPy's `project` comes from the `project` field of PyPI's BigQuery download logs. We do
not rely on its spelling: every result is grouped by the PEP 503 normalized name, computed in SQL,
so spellings that normalize alike (`Foo_Bar`, `foo-bar`) are summed into one row.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa
import requests
import tenacity

from pypi_downloads_dagster.services.http import USER_AGENT, redact_url

log = logging.getLogger(__name__)

DEFAULT_URL = "https://sql-clickhouse.clickhouse.com"
DEFAULT_USER = "demo"
DEFAULT_TABLE = "pypi.pypi_downloads_per_day_by_version_by_installer_by_type"

#: Installers pypistats leaves out of its counts (its `without_mirrors` category), compared exactly.
MIRROR_INSTALLERS = ("bandersnatch", "z3c.pypimirror", "Artifactory", "devpi")

#: Days before D that still count: `last_week` is D-6..D, `last_month` is D-29..D.
WEEK_DAYS = 7
MONTH_DAYS = 30

#: The most range queries `parts` may split a read into (one per leading letter at most).
MAX_PARTS = 26

#: What `recent_counts` returns: one row per normalized name with downloads in the 30 days.
RECENT_SCHEMA = pa.schema(
    [
        pa.field("project", pa.string(), nullable=False),  # one stored spelling (the smallest)
        pa.field("normalized", pa.string(), nullable=False),
        pa.field("last_day", pa.int64(), nullable=False),
        pa.field("last_week", pa.int64(), nullable=False),
        pa.field("last_month", pa.int64(), nullable=False),
    ]
)

#: What `daily_history` returns: one row per day and normalized name with downloads.
HISTORY_SCHEMA = pa.schema(
    [
        pa.field("date", pa.date32(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("downloads", pa.int64(), nullable=False),
    ]
)

#: What `daily_totals` returns: one row per day with downloads.
TOTALS_SCHEMA = pa.schema([pa.field("date", pa.date32(), nullable=False), pa.field("downloads", pa.int64(), nullable=False)])

# The SQL is written out whole, values only through `{name:Type}` parameters.
# - Sums by the raw `project` first, then by normalized name: the table is sorted by `project`, and
#   the regex runs once per project (about 600,000) instead of once per row (tens of millions).
# - PEP 503 in ClickHouse: lowerUTF8(replaceRegexpAll(project, '[-_.]+', '-')); re2 matches `[-_.]+`
#   like Python's re, and lowerUTF8 lower-cases every name PyPI allows like str.lower.
# - Each query reads a range of the raw `project` ({high} = '': no upper bound): the first column of
#   the table's sort key, so ClickHouse reads only that slice of the table.
# - Aliases never reuse a column's name (`date`, or `project` over an aggregate): a ClickHouse alias
#   is visible in the whole query, so `min(project) AS project` would change what `project` means.
RECENT_SQL = """
SELECT
    lowerUTF8(replaceRegexpAll(project, '[-_.]+', '-')) AS normalized,
    min(project) AS stored_name,
    sum(on_day) AS last_day,
    sum(in_week) AS last_week,
    sum(in_month) AS last_month
FROM (
    SELECT
        project,
        toInt64(sumIf(count, date = {day:Date})) AS on_day,
        toInt64(sumIf(count, date > subtractDays({day:Date}, {week_days:UInt16}))) AS in_week,
        toInt64(sum(count)) AS in_month
    FROM {database:Identifier}.{table:Identifier}
    WHERE date > subtractDays({day:Date}, {month_days:UInt16}) AND date <= {day:Date}
        AND NOT has({mirrors:Array(String)}, installer)
        AND project >= {low:String} AND ({high:String} = '' OR project < {high:String})
    GROUP BY project
)
GROUP BY normalized
HAVING last_month > 0
"""

HISTORY_SQL = """
SELECT
    day,
    lowerUTF8(replaceRegexpAll(project, '[-_.]+', '-')) AS name,
    sum(on_day) AS downloads
FROM (
    SELECT toDate32(date) AS day, project, toInt64(sum(count)) AS on_day
    FROM {database:Identifier}.{table:Identifier}
    WHERE date >= {start:Date} AND date <= {end:Date}
        AND NOT has({mirrors:Array(String)}, installer)
        AND project >= {low:String} AND ({high:String} = '' OR project < {high:String})
    GROUP BY day, project
)
GROUP BY day, name
HAVING downloads > 0
"""

TOTALS_SQL = """
SELECT toDate32(date) AS day, toInt64(sum(count)) AS downloads
FROM {database:Identifier}.{table:Identifier}
WHERE date >= {start:Date} AND date <= {end:Date}
    AND NOT has({mirrors:Array(String)}, installer)
    AND project >= {low:String} AND ({high:String} = '' OR project < {high:String})
GROUP BY day
"""

#: ClickHouse error codes worth asking again for: the server was busy or cut off, not the query
#: wrong. A 5xx with any other code (a bad query, an exceeded quota) fails at once.
TRANSIENT_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED (other queries may have finished by the next attempt)
        279,  # ALL_CONNECTION_TRIES_FAILED
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
    }
)

_ERROR_TEXT = re.compile(r"Code: (\d+)\. DB::Exception: ")
_USERINFO = re.compile(r"(?<=//)[^/@\s'\"]+@")
#: Most of an error body worth keeping in a message (ClickHouse may append a stack trace).
_MAX_MESSAGE = 1500


class ClickHouseError(RuntimeError):
    """ClickHouse refused or failed a query, or could not be reached.

    The message is safe to log: it names the server URL without credentials and never holds the
    password. `code` is ClickHouse's error code (`X-ClickHouse-Exception-Code`, e.g. 516 for a
    failed login, 62 for a syntax error) or None when no ClickHouse error came; `status` is the
    last HTTP status, or None when no answer came.
    """

    def __init__(self, message: str, *, code: Optional[int] = None, status: Optional[int] = None):
        super().__init__(message)
        self.code = code
        self.status = status


class ClickHouseUnavailable(ClickHouseError):
    """No usable answer after the retries: connection refused, DNS, timeout, an answer cut short,
    or a 5xx without a ClickHouse error."""


class _Retry(Exception):
    """An attempt that failed in a way worth repeating; carries the error to raise if none succeeds."""

    def __init__(self, error: ClickHouseError):
        super().__init__(str(error))
        self.error = error


class ClickHouseClient:
    """Read-only queries over ClickHouse's HTTP interface, answers as Arrow tables.

    `url` is the server's base URL (`https://host[:port]`); a `user:password@` in it is used as the
    credentials unless `user`/`password` are given, and is removed from the URL. Credentials go in
    the `X-ClickHouse-User`/`X-ClickHouse-Key` headers, never in the URL. The password appears in
    no message, log line or repr.

    Connection errors, timeouts, answers cut short, and 5xx answers that are not a ClickHouse error
    about the query itself are retried `attempts` times in all, waiting `initial_wait` seconds
    doubling up to `max_wait` (with jitter). Not thread-safe: one client per thread.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        user: Optional[str] = None,
        password: Optional[str] = None,
        *,
        attempts: int = 4,
        initial_wait: float = 1.0,
        max_wait: float = 30.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        parts = urlsplit(url)
        url_user = unquote(parts.username) if parts.username else None
        url_password = unquote(parts.password) if parts.password else None
        safe = redact_url(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ClickHouse URL {safe!r} is not an http(s) URL like https://host:8443")
        self._password = password if password is not None else (url_password or "")
        self.user = user if user is not None else (url_user or DEFAULT_USER)
        #: The base URL, without credentials (safe to log).
        self.url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path or "/", "", ""))
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.attempts = attempts
        self.initial_wait = initial_wait
        self.max_wait = max_wait
        self.timeout = (connect_timeout, read_timeout)
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT

    def __repr__(self) -> str:
        return f"ClickHouseClient(url={self.url!r}, user={self.user!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "ClickHouseClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def query_arrow(self, sql: str, params: Optional[Mapping[str, Any]] = None) -> Optional[pa.Table]:
        """Run one SELECT and return its result as an Arrow table (None for an empty answer body).

        `sql` must not end with a FORMAT clause (ArrowStream is added). `params` fill the query's
        `{name:Type}` placeholders, sent as `param_<name>` (ClickHouse parses and types them:
        values never become SQL text): dates, numbers, strings, and lists of strings.

        Raises `ClickHouseError` for an error ClickHouse reports, `ClickHouseUnavailable` when no
        usable answer came after the retries.
        """
        query_params = {f"param_{name}": _param_text(value) for name, value in (params or {}).items()}
        body = f"{sql.strip()}\nFORMAT ArrowStream".encode()
        headers = {
            "X-ClickHouse-User": self.user,
            "X-ClickHouse-Key": self._password,
            "Content-Type": "text/plain; charset=utf-8",
        }

        def attempt() -> Optional[pa.Table]:
            try:
                response = self._session.post(self.url, params=query_params, data=body, headers=headers, timeout=self.timeout)
                content = response.content  # the whole body now: one cut short is retried
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                raise _Retry(ClickHouseUnavailable(f"no answer from ClickHouse at {self.url}: {self._scrub(_describe(exc))}")) from None
            if response.status_code != 200:
                error = self._error(response.status_code, response.headers, content)
                if response.status_code >= 500 and (error.code is None or error.code in TRANSIENT_CODES):
                    raise _Retry(error)
                raise error
            return self._read_arrow(content)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception()
            log.warning("ClickHouse query failed (attempt %d of %d), retrying: %s", state.attempt_number, self.attempts, error)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential_jitter(initial=self.initial_wait, max=self.max_wait),
            retry=tenacity.retry_if_exception_type(_Retry),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retry as exc:
            error = exc.error
            raise type(error)(f"{error} (gave up after {self.attempts} attempts)", code=error.code, status=error.status) from None

    def _error(self, status: int, headers: Mapping[str, str], content: bytes) -> ClickHouseError:
        """The exception for a non-200 answer: ClickHouse's code and message, or the status alone."""
        text = content.decode("utf-8", errors="replace").strip()
        header_code = headers.get("X-ClickHouse-Exception-Code")
        match = _ERROR_TEXT.search(text)
        code = int(header_code) if header_code and header_code.strip().isdigit() else (int(match.group(1)) if match else None)
        if code is None:  # a proxy's or load balancer's page, not ClickHouse
            detail = re.sub(r"\s+", " ", text)[:200]
            kind = ClickHouseUnavailable if status >= 500 else ClickHouseError
            return kind(f"ClickHouse at {self.url} answered HTTP {status}: {self._scrub(detail)}", status=status)
        detail = text[match.start():] if match else text
        return ClickHouseError(
            f"ClickHouse error {code} (HTTP {status}) from {self.url}: {self._scrub(detail[:_MAX_MESSAGE])}", code=code, status=status
        )

    def _read_arrow(self, content: bytes) -> Optional[pa.Table]:
        """The Arrow table in a 200 answer; None for an empty body.

        ClickHouse sends the status before the result is complete, so an error met while sending
        arrives as text after the data of a 200: it is reported (and retried when transient).
        """
        if not content:
            return None
        try:
            return pa.ipc.open_stream(pa.BufferReader(content)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            tail = content[-65536:].decode("utf-8", errors="replace")
            match = _ERROR_TEXT.search(tail)
            if match:
                code = int(match.group(1))
                error = ClickHouseError(
                    f"ClickHouse error {code} while sending the answer from {self.url}: "
                    f"{self._scrub(tail[match.start():][:_MAX_MESSAGE].strip())}",
                    code=code,
                    status=200,
                )
                if code in TRANSIENT_CODES:
                    raise _Retry(error) from None
                raise error from None
            # Not ClickHouse's answer (a captive portal's page, a body garbled on the way): ask again.
            message = f"ClickHouse at {self.url} answered 200 with a body that is not an Arrow stream ({exc})"
            error = ClickHouseUnavailable(message, status=200)
            raise _Retry(error) from None

    def _scrub(self, text: str) -> str:
        """`text` without any user:password@ in URLs, and without the password anywhere."""
        text = _USERINFO.sub("***@", text)
        return text.replace(self._password, "***") if self._password else text


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _param_text(value: Any) -> str:
    """A query parameter as ClickHouse's HTTP interface reads it (`param_<name>=<text>`)."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join("'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'" for v in value) + "]"
    return str(value)


def last_complete_day(now: float) -> dt.date:
    """The last complete UTC day before Unix time `now` (D of pypistats' recent counts)."""
    return dt.datetime.fromtimestamp(now, tz=dt.timezone.utc).date() - dt.timedelta(days=1)


def name_ranges(parts: int) -> list[tuple[str, str]]:
    """`parts` ranges [low, high) of raw project names covering every name ('' = unbounded).

    Split at evenly spaced lower-case letters, so the parts are uneven (names starting with `p` or
    `s` are many) but each one is a contiguous slice of the table's sort key.
    """
    if not 1 <= parts <= MAX_PARTS:
        raise ValueError(f"parts must be between 1 and {MAX_PARTS}, got {parts}")
    cuts = [chr(ord("a") + round(i * 26 / parts)) for i in range(1, parts)]
    return list(zip([""] + cuts, cuts + [""]))


def _split_table(table: str) -> tuple[str, str]:
    database, dot, name = table.partition(".")
    if not dot or not database or not name or "." in name:
        raise ValueError(f"table must be 'database.table', got {table!r}")
    return database, name


def _query_parts(client: ClickHouseClient, sql: str, params: dict, table: str, parts: int, schema: pa.Schema,
                 renames: Mapping[str, str]) -> pa.Table:
    """Run `sql` once per name range and concatenate the answers, renamed and cast to `schema`."""
    database, name = _split_table(table)
    pieces = []
    for low, high in name_ranges(parts):
        answer = client.query_arrow(
            sql, {**params, "database": database, "table": name, "mirrors": list(MIRROR_INSTALLERS), "low": low, "high": high}
        )
        if answer is None or answer.num_rows == 0:
            continue
        answer = answer.rename_columns([renames.get(column, column) for column in answer.column_names])
        pieces.append(_conform(answer, schema))
    return pa.concat_tables(pieces) if pieces else schema.empty_table()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns and types. Older servers send strings as binary and Date as
    uint16 (days since 1970) unless told otherwise; the demo user may not change settings."""
    columns = []
    for field in schema:
        column = table.column(field.name)
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            column = column.cast(pa.string())
        elif field.type == pa.date32() and pa.types.is_integer(column.type):
            column = column.cast(pa.int32()).cast(pa.date32())
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


#: Dates stay Arrow date32 in pandas (4 bytes a row; a `datetime.date` object is about 50).
_DATE_AS_ARROW = {pa.date32(): pd.ArrowDtype(pa.date32())}


def _merge(table: pa.Table, keys: list[str], aggregations: Mapping[str, str]) -> pa.Table:
    """Rows of `table` with equal `keys` aggregated into one (Arrow's hash aggregation)."""
    merged = table.group_by(keys, use_threads=False).aggregate(list(aggregations.items()))
    names = {f"{column}_{how}": column for column, how in aggregations.items()}  # Arrow names them `last_day_sum`
    return merged.rename_columns([names.get(name, name) for name in merged.column_names])


def recent_counts(client: ClickHouseClient, day: dt.date, *, table: str = DEFAULT_TABLE, parts: int = 1) -> pd.DataFrame:
    """pypistats' recent counts for every project with downloads in the 30 days up to `day`.

    One query (or `parts` queries over ranges of names, for a server that limits what one query
    may read) aggregates the whole table. Columns: `project` (one spelling ClickPy stores for the
    name, the smallest when several normalize alike), `normalized` (PEP 503, the join key),
    `last_day`, `last_week`, `last_month` (int64). One row per normalized name, sorted by it;
    projects without downloads in the 30 days (pypistats' 404, our `'empty'`) have no row, and a
    project with downloads in the month but none on `day` has `last_day` 0.

    `day` is D, usually `last_complete_day(time.time())`; check with `daily_totals` that ClickPy has
    loaded it (a day not loaded yet reads as 0 downloads for everyone).
    """
    params = {"day": day, "week_days": WEEK_DAYS, "month_days": MONTH_DAYS}
    answer = _query_parts(client, RECENT_SQL, params, table, parts, RECENT_SCHEMA, {"stored_name": "project"})
    if parts > 1:  # spellings of one name may sort into different ranges: sum them here
        answer = _merge(answer, ["normalized"], {"project": "min", "last_day": "sum", "last_week": "sum", "last_month": "sum"})
    answer = answer.sort_by("normalized").select(RECENT_SCHEMA.names).cast(RECENT_SCHEMA)
    return answer.to_pandas()


def daily_history(client: ClickHouseClient, start: dt.date, end: dt.date, *, table: str = DEFAULT_TABLE, parts: int = 1) -> pd.DataFrame:
    """Downloads per project per day from `start` to `end` (inclusive), mirrors excluded.

    Columns: `date` (Arrow date32 dtype; values are `datetime.date`), `name` (PEP 503 normalized,
    spellings that normalize alike summed), `downloads` (int64). One row per day and name with
    downloads, sorted by date then name.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    answer = _query_parts(client, HISTORY_SQL, {"start": start, "end": end}, table, parts, HISTORY_SCHEMA, {"day": "date"})
    if parts > 1:
        answer = _merge(answer, ["date", "name"], {"downloads": "sum"})
    answer = answer.sort_by([("date", "ascending"), ("name", "ascending")]).select(HISTORY_SCHEMA.names).cast(HISTORY_SCHEMA)
    return answer.to_pandas(types_mapper=_DATE_AS_ARROW.get)


def daily_totals(client: ClickHouseClient, start: dt.date, end: dt.date, *, table: str = DEFAULT_TABLE) -> pd.DataFrame:
    """Total downloads per day (mirrors excluded) from `start` to `end`, for the days that have any:
    columns `date`, `downloads`, sorted by date. A missing or small last day means ClickPy has not
    loaded it yet."""
    answer = _query_parts(client, TOTALS_SQL, {"start": start, "end": end}, table, 1, TOTALS_SCHEMA, {"day": "date"})
    return answer.sort_by("date").to_pandas(types_mapper=_DATE_AS_ARROW.get)




# The top projects by downloads over the window, then their downloads per day: one query.
TREND_SQL = """
SELECT day, name, sum(on_day) AS downloads
FROM (
    SELECT toDate32(date) AS day, lowerUTF8(replaceRegexpAll(project, '[-_.]+', '-')) AS name, toInt64(sum(count)) AS on_day
    FROM {database:Identifier}.{table:Identifier}
    WHERE date >= {start:Date} AND date <= {end:Date}
        AND NOT has({mirrors:Array(String)}, installer)
        AND project >= {low:String} AND ({high:String} = '' OR project < {high:String})
    GROUP BY day, project
)
WHERE name IN (
    SELECT lowerUTF8(replaceRegexpAll(project, '[-_.]+', '-')) AS top_name
    FROM {database:Identifier}.{table:Identifier}
    WHERE date >= {start:Date} AND date <= {end:Date} AND NOT has({mirrors:Array(String)}, installer)
    GROUP BY top_name
    ORDER BY sum(count) DESC, top_name
    LIMIT {top:UInt32}
)
GROUP BY day, name
HAVING downloads > 0
"""


def top_trend(client: ClickHouseClient, end: dt.date, *, days: int = 90, top: int = 10, table: str = DEFAULT_TABLE) -> pd.DataFrame:
    """Downloads per day of the `top` projects by downloads over the `days` days up to `end`
    (mirrors excluded): columns `date`, `name` (normalized), `downloads`, sorted by date then name.
    What the trend chart draws, without reading the whole history."""
    start = end - dt.timedelta(days=days - 1)
    answer = _query_parts(client, TREND_SQL, {"start": start, "end": end, "top": top}, table, 1, HISTORY_SCHEMA, {"day": "date"})
    answer = answer.sort_by([("date", "ascending"), ("name", "ascending")]).select(HISTORY_SCHEMA.names).cast(HISTORY_SCHEMA)
    return answer.to_pandas(types_mapper=_DATE_AS_ARROW.get)
