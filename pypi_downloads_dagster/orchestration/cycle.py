"""What the daily cycle should do next, decided from plain facts about the current plan's runs.

The sensor gathers the facts from the Dagster instance; this module decides: which chunks to
launch (a bounded number at a time, failed ones again up to a limit), and whether to publish now
(a checkpoint every `deploy_span` while chunks are still being fetched, and one final publish once
every chunk is done or given up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

CHECKPOINT = "checkpoint"
FINAL = "final"

#: Run tags the cycle sets: the plan a run belongs to, which publish it is, chunks done at the time.
PLAN_TAG = "pypi_downloads/plan"
PUBLISH_TAG = "pypi_downloads/publish"
CHUNKS_DONE_TAG = "pypi_downloads/chunks_done"

#: Chunk failures that concern every chunk (the stats API is down or wrong, the clock is broken):
#: running the next chunk would only fail the same way, so a cycle stops there.
CYCLE_STOPPING_FAILURES = ("ServiceDown", "WrongStatsEndpoint", "BrokenClock")


def stops_the_cycle(failure: str) -> bool:
    """Whether a chunk run's failure message (`ErrorName: ...`, as the assets word it) stops the cycle."""
    return any(f"{name}:" in failure for name in CYCLE_STOPPING_FAILURES)


@dataclasses.dataclass(frozen=True)
class ChunkState:
    key: str
    done: bool  # materialized since the plan was made
    in_progress: bool  # a run for it is queued or running
    failures: int  # failed runs the cycle launched for it


@dataclasses.dataclass(frozen=True)
class PublishState:
    in_progress: bool = False
    last_started: Optional[float] = None  # when the plan's latest publish run was created
    chunks_done_at_last: int = -1  # chunks done when that publish was requested (-1: none yet)
    final_succeeded: bool = False
    final_failures: int = 0


@dataclasses.dataclass(frozen=True)
class ChunkLaunch:
    key: str
    attempt: int  # 1 for the first run, 2 for the first retry...


@dataclasses.dataclass(frozen=True)
class CycleActions:
    chunks: list[ChunkLaunch]
    publish: Optional[str]  # CHECKPOINT, FINAL or None
    given_up: list[str]  # chunks that failed max_chunk_attempts times: left stale, reported
    summary: str


def next_actions(
    chunks: Sequence[ChunkState],
    publish: PublishState,
    *,
    now: float,
    plan_started: float,
    deploy_span: float,
    max_chunk_attempts: int,
    max_in_flight: int,
    max_publish_attempts: int,
) -> CycleActions:
    """The runs to request now for one plan."""
    done = sum(chunk.done for chunk in chunks)
    in_flight = sum(chunk.in_progress for chunk in chunks)
    given_up = [c.key for c in chunks if not c.done and not c.in_progress and c.failures >= max_chunk_attempts]
    waiting = [c for c in chunks if not c.done and not c.in_progress and c.failures < max_chunk_attempts]
    launches = [ChunkLaunch(c.key, c.failures + 1) for c in waiting[: max(0, max_in_flight - in_flight)]]
    finished = not waiting and in_flight == 0

    decision = None
    if not publish.in_progress and not publish.final_succeeded:
        if finished and publish.final_failures < max_publish_attempts:
            decision = FINAL
        elif (
            not finished
            and done > max(publish.chunks_done_at_last, 0)
            and now - (publish.last_started or plan_started) >= deploy_span
        ):
            decision = CHECKPOINT
    summary = (
        f"{done}/{len(chunks)} chunks done, {in_flight} running, {len(waiting)} waiting, {len(given_up)} given up; "
        f"launching {len(launches)}; publish: {decision or ('done' if publish.final_succeeded else 'in progress' if publish.in_progress else 'not yet')}"
    )
    return CycleActions(launches, decision, given_up, summary)


def describe_refresh(kind: Optional[str], *, planned: int, done: int, fully_answered: int) -> str:
    """One sentence for the card on the refresh this version comes from. "Complete" only when every
    planned chunk ran and every package in it was answered. Only states, no ids or times, so
    publishing the same data again gives the same card."""
    if kind == CHECKPOINT or done < planned and kind != FINAL:
        return f"in progress; this version is a checkpoint with {done} of {planned} planned chunks fetched."
    if fully_answered < planned:
        return (
            f"finished with gaps; {planned - fully_answered} of {planned} planned chunks were not fetched or had "
            "packages that failed; those packages keep their earlier counts and are retried in the next refresh."
        )
    return "complete; every stale project planned for this refresh was answered."
