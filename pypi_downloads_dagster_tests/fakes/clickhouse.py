"""A fake ClickPy: ClickHouse's real engine (chDB) behind ClickHouse's HTTP interface on 127.0.0.1.

- `ChdbEngine`: one chDB session in a temporary directory. chDB runs one embedded server per
  process: every session in a process shares its databases, and a session on another path cannot
  open while one is open (chDB raises "EmbeddedServer already initialized with path ..."). So
  there is one engine at a time per process, and every query holds its lock (HTTP requests
  arrive on several threads, and per-request settings are set on the shared session).
- `create_downloads_table` / `load_downloads`: ClickPy's table and its schema, filled from Arrow
  tables (chDB's `Python()` table function reads them without a copy through text).
- `synthetic_downloads` (tests) and `iter_synthetic_downloads` (full scale, one day at a time):
  deterministic rows with PyPI's shapes: versions, installers (mirrors included), file types,
  heavy-tailed counts, spellings that normalize alike, projects only outside the 30 days, and
  rows after D.
- `FakeClickHouse`: the HTTP interface (ClickHouse's `HTTPHandler`): the query in the POST body
  and/or the `query` parameter (GET: read-only), credentials from `X-ClickHouse-User`/`-Key`,
  `user`/`password` parameters or basic auth (only one way at a time), `database`,
  `default_format` (or `X-ClickHouse-Format`; TabSeparated when neither), `param_<name>` for
  `{name:Type}` placeholders, any other parameter as a setting for that query. Errors are
  ClickHouse's: `Code: N. DB::Exception: ... (NAME) (version ...)` with `X-ClickHouse-Exception-Code`
  and the status ClickHouse maps the code to (`exceptionCodeToHTTPStatus.cpp`: 516 -> 403,
  62 -> 400, 60 -> 404, most others 500). Faults can be injected: statuses, dropped connections,
  bodies cut short, errors in the middle of an answer, slow answers.

    python -m pypi_downloads_dagster_tests.fakes.clickhouse   # serve small synthetic data until Ctrl-C
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import NamedTuple, Optional
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pypi_downloads_dagster.services.clickhouse import DEFAULT_TABLE
from pypi_downloads_dagster_tests.fakes.server import LocalServer, QuietHandler

#: ClickPy's table, as `scripts/create_tables.sh` in ClickHouse/clickpy creates it.
DOWNLOADS_SCHEMA = pa.schema(
    [
        pa.field("project", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        pa.field("installer", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)
_CREATE_TABLE = """
CREATE TABLE `{database}`.`{table}`
(
    `project` String,
    `version` String,
    `date` Date,
    `installer` String,
    `type` LowCardinality(String),
    `count` Int64
)
ENGINE = SummingMergeTree
ORDER BY (project, version, date, installer)
"""

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHDB_ERROR = re.compile(r"Code: (\d+)\. DB::Exception: ")


class EngineError(Exception):
    """A query chDB refused: ClickHouse's code and message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ChdbEngine:
    """ClickHouse in-process (chDB), state kept in `path` (default: a new temporary directory,
    removed on `close`). One per process at a time (see the module docstring). Thread-safe."""

    _open: Optional["ChdbEngine"] = None
    _open_lock = threading.Lock()

    def __init__(self, path: Optional[str] = None):
        from chdb import session  # imported here: only the tests that use the engine need chDB

        with ChdbEngine._open_lock:
            if ChdbEngine._open is not None:
                raise RuntimeError("a ChdbEngine is already open in this process (chDB runs one engine per process): close it first")
            self._tempdir = tempfile.TemporaryDirectory(prefix="fake-clickhouse-") if path is None else None
            self.path = path or self._tempdir.name
            self._session = session.Session(self.path)
            ChdbEngine._open = self
        self.lock = threading.RLock()
        self.version = self.query("SELECT version()").decode().strip()
        self._code_names: Optional[dict[int, str]] = None

    def close(self) -> None:
        with ChdbEngine._open_lock:
            if ChdbEngine._open is self:
                with self.lock:
                    self._session.close()
                ChdbEngine._open = None
                if self._tempdir is not None:
                    self._tempdir.cleanup()

    def __enter__(self) -> "ChdbEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def query(
        self,
        sql: str,
        fmt: str = "TabSeparated",
        *,
        params: Optional[Mapping[str, str]] = None,
        settings: Optional[Mapping[str, str]] = None,
        database: Optional[str] = None,
    ) -> bytes:
        """Run one statement; the answer's bytes in `fmt` (a FORMAT clause in `sql` wins).

        `settings` and `database` hold for this statement only. Raises `EngineError`."""
        settings = dict(settings or {})
        for name in settings:
            if not _IDENTIFIER.match(name):
                raise EngineError(115, f"Unknown setting '{name}'. (UNKNOWN_SETTING)")
        with self.lock:
            changed = []
            try:
                if database:
                    self._run(f"USE `{_identifier(database)}`")
                for name, value in settings.items():
                    self._run(f"SET {name} = {_quote(value)}")
                    changed.append(name)
                return self._run(sql, fmt, params=dict(params or {}))
            finally:
                for name in changed:
                    self._run(f"SET {name} = DEFAULT")
                if database:
                    self._run("USE default")

    def _run(self, sql: str, fmt: str = "TabSeparated", params: Optional[dict] = None) -> bytes:
        try:
            result = self._session.query(sql, fmt, params=params or None)
        except Exception as exc:  # chDB raises ChdbError/RuntimeError with ClickHouse's message
            text = str(exc)
            match = _CHDB_ERROR.search(text)
            raise EngineError(int(match.group(1)) if match else 1001, text[match.start():] if match else text) from None
        return result.bytes() if result is not None else b""

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Append `data` (columns by name) to `table` ('database.table')."""
        database, name = _split_table(table)
        rows = data  # noqa: F841 - chDB's Python() table function finds the Arrow table by its variable name
        columns = ", ".join(f"`{_identifier(c)}`" for c in data.column_names)
        with self.lock:
            self._run(f"INSERT INTO `{database}`.`{name}` ({columns}) SELECT {columns} FROM Python(rows)")

    def code_name(self, code: int) -> str:
        """ClickHouse's name for an error code (`UNKNOWN_TABLE` for 60), '' if none."""
        if self._code_names is None:
            lines = self.query("SELECT number, errorCodeToName(number) FROM numbers(2000) WHERE errorCodeToName(number) != ''")
            self._code_names = {int(n): name for n, name in (line.split("\t") for line in lines.decode().splitlines())}
        return self._code_names.get(code, "")


def _identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


def _split_table(table: str) -> tuple[str, str]:
    database, _, name = table.partition(".")
    return _identifier(database), _identifier(name)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_downloads_table(engine: ChdbEngine, table: str = DEFAULT_TABLE) -> None:
    """(Re)create ClickPy's downloads table, empty, and its database."""
    database, name = _split_table(table)
    engine.query(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    engine.query(f"DROP TABLE IF EXISTS `{database}`.`{name}`")
    engine.query(_CREATE_TABLE.format(database=database, table=name))


def load_downloads(engine: ChdbEngine, rows: pa.Table | pd.DataFrame, table: str = DEFAULT_TABLE, *, batch_rows: int = 2_000_000) -> int:
    """Append download rows (`DOWNLOADS_SCHEMA` columns) to `table`; returns how many."""
    if isinstance(rows, pd.DataFrame):
        rows = pa.Table.from_pandas(rows[list(DOWNLOADS_SCHEMA.names)], schema=DOWNLOADS_SCHEMA, preserve_index=False)
    rows = rows.select(DOWNLOADS_SCHEMA.names).cast(DOWNLOADS_SCHEMA)
    for offset in range(0, rows.num_rows, batch_rows):
        engine.insert_arrow(table, rows.slice(offset, batch_rows))
    return rows.num_rows


# -- synthetic data --------------------------------------------------------------------------------

#: Installers and their share of rows. "" is how ClickPy stores an unknown installer.
INSTALLERS = {
    "pip": 0.52, "uv": 0.16, "poetry": 0.05, "requests": 0.05, "": 0.05, "Browser": 0.03, "pdm": 0.02,
    "setuptools": 0.02, "OS": 0.01, "bandersnatch": 0.045, "devpi": 0.015, "Artifactory": 0.015, "z3c.pypimirror": 0.005,
}
FILE_TYPES = {"bdist_wheel": 0.8, "sdist": 0.2}
_VERSIONS = pa.array([f"{major}.{minor}.{patch}" for major in range(4) for minor in range(10) for patch in range(5)])


def project_names(count: int) -> list[str]:
    """`count` stored project names, mostly normalized, some in other spellings (`Pkg_7`,
    `pkg.11`), and every 1000th followed by another spelling of the same normalized name."""
    names = []
    for i in range(count):
        if i % 1000 == 999:
            names.append(names[-1].upper().replace("-", "_"))  # `PKG_998` beside `pkg-998`
        elif i % 13 == 0:
            names.append(f"Pkg_{i}")
        elif i % 11 == 0:
            names.append(f"pkg.{i}")
        else:
            names.append(f"pkg-{i}")
    return names


def iter_synthetic_downloads(
    day: dt.date,
    *,
    projects: int = 930_000,
    days: int = 35,
    active_share: float = 0.6,
    old_share: float = 0.05,
    seed: int = 0,
) -> Iterator[pa.Table]:
    """Download rows one day at a time (`DOWNLOADS_SCHEMA`), from `day - (days - 2)` to `day + 1`.

    Of `projects` stored names, `active_share` have downloads in the 30 days up to `day` (a tenth
    of them stop before `day`, so some have none on it), `old_share` only before them, the rest
    none at all. Mean daily downloads follow a Pareto tail (median about 3, the largest tens of
    millions);
    a project-day has a few rows (versions x installers x file types), more for popular projects.
    """
    rng = np.random.default_rng(seed)
    names = pa.array(project_names(projects))
    n = len(names)
    kind = rng.random(n)
    active = kind < active_share
    old = (kind >= active_share) & (kind < active_share + old_share)
    mean = np.where(active | old, np.minimum(3e7, 1 + rng.pareto(0.7, n)), 0.0)
    first_day = day - dt.timedelta(days=days - 2)
    window_start = day - dt.timedelta(days=29)
    # Active projects that stop downloading somewhere in the window; old ones stop before it.
    stop = np.full(n, (day + dt.timedelta(days=1) - first_day).days)
    fading = active & (rng.random(n) < 0.1)
    stop[fading] = rng.integers((window_start - first_day).days, (day - first_day).days, int(fading.sum()))
    stop[old] = rng.integers(0, (window_start - first_day).days, int(old.sum()))
    versions = 1 + rng.poisson(1 + np.log10(1 + mean))
    version_offset = rng.integers(0, len(_VERSIONS), n)
    installer_names = pa.array(list(INSTALLERS))
    installer_p = np.array(list(INSTALLERS.values())) / sum(INSTALLERS.values())
    type_names = pa.array(list(FILE_TYPES))
    for index in range(days):
        date = first_day + dt.timedelta(days=index)
        downloads = rng.poisson(mean * (index <= stop))
        (who,) = np.nonzero(downloads)
        rows_per = np.minimum(downloads[who], 1 + rng.poisson(0.3 + 0.8 * np.log10(1 + mean[who]) ** 2))
        project = np.repeat(who, rows_per)
        # Split each project-day's downloads over its rows by random weights (at least 1 per row).
        weight = rng.exponential(1.0, len(project))
        starts = np.concatenate([[0], np.cumsum(rows_per)[:-1]])
        share = weight / np.repeat(np.add.reduceat(weight, starts), rows_per)
        count = np.maximum(1, np.rint(np.repeat(downloads[who], rows_per) * share)).astype(np.int64)
        version = (version_offset[project] + rng.integers(0, 1 << 30, len(project)) % versions[project]) % len(_VERSIONS)
        yield pa.Table.from_arrays(
            [
                pc.take(names, pa.array(project)),
                pc.take(_VERSIONS, pa.array(version)),
                pa.array(np.full(len(project), (date - dt.date(1970, 1, 1)).days, dtype=np.int32)).cast(pa.date32()),
                pc.take(installer_names, pa.array(rng.choice(len(installer_p), len(project), p=installer_p))),
                pc.take(type_names, pa.array((rng.random(len(project)) >= FILE_TYPES["bdist_wheel"]).astype(np.int64))),
                pa.array(count),
            ],
            schema=DOWNLOADS_SCHEMA,
        )


def edge_case_downloads(day: dt.date) -> pd.DataFrame:
    """Hand-made rows for the boundaries of pypistats' definition around D = `day`."""
    d = lambda n: day - dt.timedelta(days=n)  # noqa: E731 - reads as "D-n"
    rows = [
        # (project, version, date, installer, type, count)
        ("edge-day-only", "1.0", d(0), "pip", "bdist_wheel", 5),
        ("edge-week-boundary", "1.0", d(6), "pip", "bdist_wheel", 7),  # in the week
        ("edge-week-boundary", "1.0", d(7), "pip", "bdist_wheel", 11),  # month only
        ("edge-month-boundary", "1.0", d(29), "uv", "sdist", 13),  # in the month
        ("edge-month-boundary", "1.0", d(30), "uv", "sdist", 17),  # out
        ("edge-outside-only", "2.0", d(30), "pip", "bdist_wheel", 19),
        ("edge-outside-only", "2.0", d(33), "pip", "bdist_wheel", 23),
        ("edge-after-d-only", "1.0", d(-1), "pip", "bdist_wheel", 29),
        ("edge-after-d", "1.0", d(-1), "pip", "bdist_wheel", 1000),
        ("edge-after-d", "1.0", d(0), "pip", "bdist_wheel", 2),
        ("edge-mirror-only", "1.0", d(0), "bandersnatch", "bdist_wheel", 31),
        ("edge-mirror-only", "1.0", d(1), "devpi", "sdist", 37),
        ("edge-mirror-only", "1.0", d(2), "Artifactory", "sdist", 41),
        ("edge-mirror-only", "1.0", d(3), "z3c.pypimirror", "sdist", 43),
        ("edge-mirror-mixed", "1.0", d(0), "bandersnatch", "bdist_wheel", 47),
        ("edge-mirror-mixed", "1.0", d(0), "pip", "bdist_wheel", 3),
        ("edge-no-last-day", "0.1", d(3), "poetry", "sdist", 53),
        ("edge-no-last-day", "0.2", d(20), "", "sdist", 59),
        # Spellings of one normalized name (`foo-bar`), over days and versions.
        ("Foo_Bar", "1.0", d(0), "pip", "bdist_wheel", 61),
        ("foo-bar", "1.0", d(0), "pip", "bdist_wheel", 67),
        ("foo.bar", "1.1", d(5), "uv", "sdist", 71),
        ("FOO__bar", "1.1", d(25), "pip", "bdist_wheel", 73),
        ("Django", "5.0", d(0), "pip", "bdist_wheel", 79),
        ("django", "5.0", d(1), "pip", "bdist_wheel", 83),
        ("zope.interface", "6.0", d(2), "pip", "bdist_wheel", 89),
        ("Zope.Interface", "5.0", d(0), "pip", "bdist_wheel", 7),  # sorts far from `zope.interface`
        # One key twice: a SummingMergeTree sums them (when it merges; queries sum anyway).
        ("edge-duplicate-key", "1.0", d(0), "pip", "bdist_wheel", 97),
        ("edge-duplicate-key", "1.0", d(0), "pip", "bdist_wheel", 101),
        ("edge-duplicate-key", "1.0", d(0), "pip", "sdist", 103),
    ]
    return pd.DataFrame(rows, columns=list(DOWNLOADS_SCHEMA.names))


def synthetic_downloads(day: dt.date, *, projects: int = 300, seed: int = 0) -> pd.DataFrame:
    """Small synthetic rows for tests: `iter_synthetic_downloads` for `projects` names over 35 days,
    plus `edge_case_downloads`. Columns as `DOWNLOADS_SCHEMA`; `date` holds `datetime.date`."""
    generated = pa.concat_tables(iter_synthetic_downloads(day, projects=projects, seed=seed)).to_pandas()
    return pd.concat([generated, edge_case_downloads(day)], ignore_index=True)


# -- the HTTP interface ----------------------------------------------------------------------------

#: ClickHouse's mapping of error names to HTTP statuses (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp).
_STATUS_BY_NAME = {
    401: {"REQUIRED_PASSWORD"},
    403: {"UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"},
    400: {
        "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
        "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
        "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
        "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH", "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    },
    404: {
        "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE", "UNKNOWN_DATABASE",
        "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT",
        "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE",
    },
    413: {"QUERY_IS_TOO_LARGE"},
    501: {"NOT_IMPLEMENTED"},
    503: {"SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"},
    411: {"HTTP_LENGTH_REQUIRED"},
    408: {"TIMEOUT_EXCEEDED"},
    415: {"UNSUPPORTED_MEDIA_TYPE"},
}
STATUS_FOR_NAME = {name: status for status, names in _STATUS_BY_NAME.items() for name in names}

#: Parameters the HTTP handler reads itself; every other one (not `param_*`) is a setting.
_HANDLER_PARAMS = {
    "query", "user", "password", "quota_key", "database", "default_format", "query_id", "session_id", "session_timeout",
    "session_check", "compress", "decompress", "buffer_size", "wait_end_of_query", "stacktrace", "role",
    "http_response_buffer_size", "client_protocol_version", "close_session",
}
_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
}
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_READ_ONLY = re.compile(r"^\s*(\(|SELECT\b|WITH\b|SHOW\b|DESC\b|DESCRIBE\b|EXISTS\b|EXPLAIN\b)", re.IGNORECASE)
AUTH_FAILED = "Authentication failed: password is incorrect, or there is no user with such name."


class LoggedRequest(NamedTuple):
    method: str
    user: Optional[str]
    query: str
    status: Optional[int]  # None: the connection was dropped without an answer


class _ClickHouseHandler(QuietHandler):

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self) -> None:
        fake: FakeClickHouse = self.server.app
        split = urlsplit(self.path)
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        body = self.read_body() if self.command == "POST" else b""
        sql = "\n".join(part for part in (params.get("query", ""), body.decode("utf-8", errors="replace")) if part)
        if split.path == "/ping" or (split.path == "/" and not sql.strip()):
            self.send_body(200, b"Ok.\n", "text/html; charset=UTF-8")
            return
        fault = fake._next_fault()
        user = self._user(params)
        if fault == "drop":
            fake._log(LoggedRequest(self.command, user, sql, None))
            self.close_connection = True
            return
        if isinstance(fault, tuple) and fault[0] == "status":
            _, status, code, text = fault
            headers = {"X-ClickHouse-Exception-Code": str(code)} if code else {}
            self._answer(fake, user, sql, status, text.encode(), "text/plain; charset=UTF-8", headers)
            return
        if isinstance(fault, tuple) and fault[0] == "delay":
            time.sleep(fault[1])
        status, answer, content_type, headers = self._execute(fake, params, sql)
        if status == 200 and fault == "truncate":  # promise the whole body, send half, hang up
            fake._log(LoggedRequest(self.command, user, sql, status))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer[: len(answer) // 2])
            self.close_connection = True
            return
        if status == 200 and isinstance(fault, tuple) and fault[0] == "midstream":
            # ClickHouse has sent 200 and part of the data when the error comes: the text follows.
            answer = answer[: len(answer) // 2] + self._error_text(fake, fault[1], fault[2]).encode()
        self._answer(fake, user, sql, status, answer, content_type, headers)

    def _user(self, params: Mapping[str, str]) -> Optional[str]:
        return self.headers.get("X-ClickHouse-User") or params.get("user") or "default"

    def _credentials(self, params: Mapping[str, str]) -> tuple[str, str] | str:
        """(user, password) as ClickHouse reads them, or the error message for a mix of ways."""
        by_headers = "X-ClickHouse-User" in self.headers or "X-ClickHouse-Key" in self.headers
        by_params = "user" in params or "password" in params
        authorization = self.headers.get("Authorization", "")
        by_basic = authorization.lower().startswith("basic ")
        if sum((by_headers, by_params, by_basic)) > 1:
            return ("Invalid authentication: it is not allowed to use Authorization HTTP header and authentication via "
                    "parameters simultaneously")
        if by_basic:
            try:
                user, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
            except ValueError:
                return "Invalid authentication: the Authorization HTTP header is malformed"
            return user or "default", password
        if by_headers:
            return self.headers.get("X-ClickHouse-User") or "default", self.headers.get("X-ClickHouse-Key", "")
        return params.get("user") or "default", params.get("password", "")

    def _execute(self, fake: "FakeClickHouse", params: Mapping[str, str], sql: str) -> tuple[int, bytes, str, dict]:
        credentials = self._credentials(params)
        if isinstance(credentials, str):
            return self._error(fake, 516, credentials)
        user, password = credentials
        if fake.users.get(user) != password:
            return self._error(fake, 516, f"{user}: {AUTH_FAILED}")
        if self.command == "GET" and not _READ_ONLY.match(sql):
            return self._error(fake, 164, "Cannot execute query in readonly mode. (READONLY)")
        fmt = params.get("default_format") or self.headers.get("X-ClickHouse-Format") or "TabSeparated"
        query_params = {name[len("param_"):]: value for name, value in params.items() if name.startswith("param_")}
        settings = {name: value for name, value in params.items() if name not in _HANDLER_PARAMS and not name.startswith("param_")}
        try:
            answer = fake.engine.query(sql, fmt, params=query_params, settings=settings, database=params.get("database"))
        except EngineError as exc:
            return self._error(fake, exc.code, exc.message)
        match = _FORMAT_CLAUSE.search(sql)
        fmt = match.group(1) if match else fmt
        headers = {
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Query-Id": params.get("query_id") or str(uuid.uuid4()),
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "fake-clickhouse",
        }
        return 200, answer, _CONTENT_TYPES.get(fmt, "application/octet-stream"), headers

    def _error_text(self, fake: "FakeClickHouse", code: int, message: str) -> str:
        """ClickHouse's error body: `Code: N. DB::Exception: <message> (NAME) (version V)`."""
        if not message.startswith("Code: "):
            name = fake.engine.code_name(code)
            suffix = f" ({name})" if name and not message.rstrip().endswith(f"({name})") else ""
            message = f"Code: {code}. DB::Exception: {message}{suffix}"
        return f"{message} (version {fake.engine.version} (chdb))\n"

    def _error(self, fake: "FakeClickHouse", code: int, message: str) -> tuple[int, bytes, str, dict]:
        status = STATUS_FOR_NAME.get(fake.engine.code_name(code), 500)
        body = self._error_text(fake, code, message).encode()
        return status, body, "text/plain; charset=UTF-8", {"X-ClickHouse-Exception-Code": str(code)}

    def _answer(self, fake: "FakeClickHouse", user, sql: str, status: int, body: bytes, content_type: str, headers: dict) -> None:
        fake._log(LoggedRequest(self.command, user, sql, status))
        try:
            self.send_body(status, body, content_type, headers)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
            self.close_connection = True


class FakeClickHouse(LocalServer):
    """ClickHouse's HTTP interface at `url`, answered by `engine`. Use as a context manager.

    `users` maps user names to passwords (default: ClickPy's `demo` without one, and `default`).
    Faults are queued and consumed one per query request, in order.
    """

    def __init__(self, engine: ChdbEngine, users: Optional[Mapping[str, str]] = None):
        self.engine = engine
        self.users = dict(users if users is not None else {"default": "", "demo": ""})
        self.lock = threading.Lock()
        self._faults: list = []
        self._log_entries: list[LoggedRequest] = []
        super().__init__(_ClickHouseHandler, app=self)

    # -- fault injection --

    def fail(self, status: int, times: int = 1, *, code: Optional[int] = None, text: Optional[str] = None) -> None:
        """The next `times` queries answer `status`; with `code`, as a ClickHouse error with that
        code (`X-ClickHouse-Exception-Code`), else with a proxy's plain text."""
        if text is None and code:
            text = f"Code: {code}. DB::Exception: Injected failure. ({self.engine.code_name(code)}) (version {self.engine.version})\n"
        elif text is None:
            text = f"{status} Service Unavailable\n"
        with self.lock:
            self._faults.extend([("status", status, code, text)] * times)

    def drop(self, times: int = 1) -> None:
        """The next `times` queries get the connection closed without an answer."""
        with self.lock:
            self._faults.extend(["drop"] * times)

    def truncate(self, times: int = 1) -> None:
        """The next `times` successful answers are cut off halfway (Content-Length promises more)."""
        with self.lock:
            self._faults.extend(["truncate"] * times)

    def fail_midstream(self, code: int = 241, message: str = "Memory limit (total) exceeded: would use 9.31 GiB", times: int = 1) -> None:
        """The next `times` successful answers stop halfway with ClickHouse's error text after the
        data (what ClickHouse sends when a query fails after the 200 status went out)."""
        with self.lock:
            self._faults.extend([("midstream", code, message)] * times)

    def delay(self, seconds: float, times: int = 1) -> None:
        """The next `times` queries answer after `seconds`."""
        with self.lock:
            self._faults.extend([("delay", seconds)] * times)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _next_fault(self):
        with self.lock:
            return self._faults.pop(0) if self._faults else None

    # -- request log --

    @property
    def log(self) -> list[LoggedRequest]:
        with self.lock:
            return list(self._log_entries)

    def clear_log(self) -> None:
        with self.lock:
            self._log_entries.clear()

    def _log(self, entry: LoggedRequest) -> None:
        with self.lock:
            self._log_entries.append(entry)


def main() -> None:  # pragma: no cover - a manual tool
    day = dt.date.today() - dt.timedelta(days=1)
    with ChdbEngine() as engine:
        create_downloads_table(engine)
        rows = load_downloads(engine, synthetic_downloads(day, projects=2000))
        with FakeClickHouse(engine) as fake:
            print(f"fake ClickHouse on {fake.url} (user demo, no password): {rows} rows, D = {day}; Ctrl-C stops", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
