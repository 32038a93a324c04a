"""Leases kept in the Dagster instance's own database: who may fetch a chunk, who may send through
an egress. Every run, whoever launched it (the cycle sensor, `sync`, a backfill, the UI) and on
whichever machine, takes its leases from the one table every run of the instance can reach: a
SQLite file on one machine, PostgreSQL beyond it.

A lease is one row (name, holder, expires_at). Taking it is a single atomic statement
(`INSERT ... ON CONFLICT DO UPDATE ... WHERE` the row expired or is already ours, `RETURNING`), so
two runs can never both hold one, on SQLite as on PostgreSQL, and no file lock is involved. A holder
renews its leases while it works; a holder that died (killed, machine gone) stops renewing and its
leases expire after `ttl` seconds, so nothing stays taken forever.

Times are wall-clock seconds of the machines taking leases: their clocks must agree to well within
`ttl` (NTP does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import ContextManager, Optional

import sqlalchemy as sa

TABLE = "pypi_downloads_leases"
#: Seconds a lease lasts without renewal; holders renew every third of it.
DEFAULT_TTL = 90.0

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    name VARCHAR(512) PRIMARY KEY,
    holder VARCHAR(512) NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
)
"""
# One statement: insert, or take over a row that expired or is already ours. RETURNING gives a
# row only when this holder now holds the lease (SQLite >= 3.35, PostgreSQL >= 9.5).
_TAKE = sa.text(
    f"""
INSERT INTO {TABLE} (name, holder, expires_at) VALUES (:name, :holder, :expires_at)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE {TABLE}.expires_at < :now OR {TABLE}.holder = excluded.holder
RETURNING holder
"""
)
_RENEW = sa.text(f"UPDATE {TABLE} SET expires_at = :expires_at WHERE name = :name AND holder = :holder")
_RELEASE = sa.text(f"DELETE FROM {TABLE} WHERE name = :name AND holder = :holder")
# Released, but taken by nobody until `until` (the lease "expires" then).
_REST = sa.text(f"UPDATE {TABLE} SET holder = :resting, expires_at = :until WHERE name = :name AND holder = :holder")
_FORGET_EXPIRED = sa.text(f"DELETE FROM {TABLE} WHERE expires_at < :before")


def holder_name(run_id: str) -> str:
    """Who holds a lease, as a person reads it: the run, the machine and the process."""
    return f"run {run_id} on {socket.gethostname()} (pid {os.getpid()})"


def run_of(holder: str) -> Optional[str]:
    """The run id in a `holder_name` (None for a holder named otherwise)."""
    match = re.match(r"run (\S+) on ", holder)
    return match.group(1) if match else None


class LeaseTable:
    """The lease table behind `connect` (a context manager giving a SQLAlchemy connection whose
    statements are committed when it closes). Thread-safe: each call opens its own connection."""

    def __init__(self, connect: Callable[[], ContextManager[sa.Connection]], *, clock: Callable[[], float] = time.time):
        self._connect = connect
        self._clock = clock
        self._created = False

    @classmethod
    def of_instance(cls, instance, *, clock: Callable[[], float] = time.time) -> "LeaseTable":
        """The table in a Dagster instance's database (the event log's index: SQLite or PostgreSQL)."""
        return cls(instance.event_log_storage.index_connection, clock=clock)

    @contextlib.contextmanager
    def _connection(self):
        with self._connect() as conn:
            if not self._created:
                conn.execute(sa.text(_CREATE))
                self._created = True
            yield conn

    def take(self, name: str, holder: str, ttl: float = DEFAULT_TTL) -> bool:
        """Take (or renew) the lease `name` for `holder`; False when another live holder has it."""
        now = self._clock()
        with self._connection() as conn:
            row = conn.execute(_TAKE, {"name": name, "holder": holder, "expires_at": now + ttl, "now": now}).fetchone()
        return row is not None and row[0] == holder

    def renew(self, names: Iterable[str], holder: str, ttl: float = DEFAULT_TTL) -> list[str]:
        """Extend `holder`'s leases; returns those it no longer holds (they expired and were taken)."""
        lost = []
        expires_at = self._clock() + ttl
        with self._connection() as conn:
            for name in names:
                if conn.execute(_RENEW, {"name": name, "holder": holder, "expires_at": expires_at}).rowcount != 1:
                    lost.append(name)
        return lost

    def release(self, names: Iterable[str], holder: str, *, rest: Optional[dict[str, float]] = None) -> None:
        """Give up `holder`'s leases (a lease someone else holds now is left alone). A name in
        `rest` ({name: seconds}) is free only after that many seconds: an egress released right
        after a request must not be used again before its pacing interval has passed."""
        names = list(names)
        if not names:
            return
        rest = rest or {}
        now = self._clock()
        with self._connection() as conn:
            for name in names:
                if rest.get(name, 0) > 0:
                    conn.execute(_REST, {"name": name, "holder": holder, "resting": f"{holder}, released: resting", "until": now + rest[name]})
                else:
                    conn.execute(_RELEASE, {"name": name, "holder": holder})
            # Rows of holders that died long ago: keep the table small.
            conn.execute(_FORGET_EXPIRED, {"before": self._clock() - 86400})

    def holders(self, prefix: str) -> dict[str, str]:
        """Live leases whose name starts with `prefix`: {name: holder}."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = sa.text(f"SELECT name, holder FROM {TABLE} WHERE name LIKE :prefix ESCAPE '\\' AND expires_at >= :now")
        with self._connection() as conn:
            rows = conn.execute(query, {"prefix": escaped + "%", "now": self._clock()}).fetchall()
        return {name: holder for name, holder in rows}


CHUNK = "chunk:"
EGRESS = "egress:"


def chunk_lease(key: str) -> str:
    return f"{CHUNK}{key}"


def egress_lease(label: str) -> str:
    return f"{EGRESS}{label}"


class LeaseLost(RuntimeError):
    """A lease this run held expired and was taken by another (this process stalled past the ttl)."""


@dataclasses.dataclass
class Keeper:
    """Renews a holder's leases in a background thread while they are in use.

    `on_lost(names)` is called (from that thread) with leases found taken by someone else; they are
    no longer renewed. `close()` stops renewing and releases every lease still held.
    """

    table: LeaseTable
    holder: str
    ttl: float = DEFAULT_TTL
    on_lost: Optional[Callable[[list[str]], None]] = None

    def __post_init__(self):
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def take(self, name: str) -> bool:
        if self.table.take(name, self.holder, self.ttl):
            with self._lock:
                self._held.add(name)
            return True
        return False

    def release(self, names: Sequence[str], rest: Optional[dict[str, float]] = None) -> None:
        with self._lock:
            self._held.difference_update(names)
        self.table.release(names, self.holder, rest=rest)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            names = self.held()
            if not names:
                continue
            try:
                lost = self.table.renew(names, self.holder, self.ttl)
            except Exception:  # the database is briefly unreachable: try again next round
                continue
            if lost:
                with self._lock:
                    self._held.difference_update(lost)
                if self.on_lost is not None:
                    self.on_lost(lost)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.release(sorted(self.held()))


class EgressLeases:
    """Which egresses of the pool this run may send through: those it holds the lease of.

    A background thread takes every free egress lease it can (every `poll` seconds), so a run uses
    all egresses no other run holds, and picks up one another run lets go within a poll. Each run
    paces the egresses it holds in-process: as no two runs hold one egress, no egress is ever sent
    faster than its pacing, whatever runs on whatever machines. Used as the HttpClient's `gate`.
    """

    def __init__(
        self, keeper: Keeper, labels: Sequence[str], *, poll: float = 1.0, clear_dead: Optional[Callable[[], None]] = None
    ):
        """`clear_dead()`, when given, releases leases of holders known to be dead (a run the
        instance marked failed); it is called, at most every 5 s, while some egress is taken."""
        self._keeper = keeper
        self._labels = list(dict.fromkeys(labels))
        self._poll = poll
        self._clear_dead = clear_dead
        self._cleared_at = 0.0
        self._stop = threading.Event()
        #: {label: seconds until the egress may send again}, from the client using these leases.
        self.resting: Optional[Callable[[], dict[str, float]]] = None
        self._grab()
        self._thread = threading.Thread(target=self._run, name="egress-leases", daemon=True)
        self._thread.start()

    def _grab(self) -> None:
        held = self._keeper.held()
        if self._clear_dead is not None and len(held) < len(self._labels) and time.monotonic() - self._cleared_at >= 5:
            self._cleared_at = time.monotonic()
            try:
                self._clear_dead()
            except Exception:  # the database is briefly unreachable: try again later
                pass
        for label in self._labels:
            name = egress_lease(label)
            if name in held:
                continue
            try:
                self._keeper.take(name)
            except Exception:  # the database is briefly unreachable: try again next poll
                return

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self._grab()

    def held(self) -> frozenset[str]:
        """Labels of the egresses this run holds now."""
        prefix = len(EGRESS)
        return frozenset(name[prefix:] for name in self._keeper.held() if name.startswith(EGRESS))

    def holders(self) -> dict[str, str]:
        """{egress label: holder} of every egress someone holds (for a person: who has them)."""
        return {name[len(EGRESS):]: holder for name, holder in self._keeper.table.holders(EGRESS).items()}

    def close(self) -> None:
        """Stop taking egresses and release the held ones, each free for no one until its pacing
        allows a request again (`resting`, set to the client's `HttpClient.resting`)."""
        self._stop.set()
        self._thread.join(timeout=5)
        held = [name for name in self._keeper.held() if name.startswith(EGRESS)]
        resting = self.resting() if self.resting is not None else {}
        rest = {egress_lease(label): seconds for label, seconds in resting.items()}
        self._keeper.release(held, rest=rest)
