import json
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pypi_downloads_dagster.dataset.store import FETCHED_SCHEMA, FetchStore, InvalidFetchRow
from pypi_downloads_dagster.services.pypistats import RecentCounts, counts_day_start
from pypi_downloads_dagster.dataset.schema import EARLIEST_UPDATED_AT, MAX_COUNT

T = 1_800_000_000.0


def at_t(root):
    """A store whose "now" is T (fetch times after now + skew are refused)."""
    return FetchStore(root, clock=lambda: T)


def rows(*items):
    frame = pd.DataFrame(items, columns=["normalized", "last_day", "last_week", "last_month", "status", "updated_at"])
    for column in ("last_day", "last_week", "last_month"):
        frame[column] = frame[column].astype("Int64")
    return frame


def journal_file(root, key, run_id="local"):
    """Where a run's journal of chunk `key` lives (its folder made, for tests that write one by hand)."""
    path = root / "journals" / key / f"{run_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def published(*items):
    """A published dataset with (name, updated_at)."""
    return pd.DataFrame({"name": [n for n, _ in items], "updated_at": [t for _, t in items]})


def test_a_killed_run_keeps_every_answer_it_journaled(tmp_path):
    store = at_t(tmp_path)
    with store.journal("K") as record:
        record(RecentCounts("a", 1, 2, 3, "valid", T))
        record(RecentCounts("b", None, None, None, "empty", T))
    (journal_file(tmp_path, "K")).open("a").write('{"normalized": "c", "last_d')  # cut off mid-line
    assert store.keys() == ["K"]
    frame = store.read("K").set_index("normalized")
    assert frame.loc["a", "last_month"] == 3 and frame.loc["b", "status"] == "empty" and "c" not in frame.index
    assert store.fetched_since(T) == {"a", "b"} and store.fetched_since(T + 1) == set()


def test_write_folds_the_journal_and_keeps_rows_a_rerun_missed(tmp_path):
    store = at_t(tmp_path)
    store.write("K", rows(("a", 1, 1, 1, "valid", T), ("b", 2, 2, 2, "valid", T)))
    with store.journal("K") as record:
        record(RecentCounts("a", 5, 5, 5, "valid", T + 10))
    store.write("K", rows(("a", 5, 5, 5, "valid", T + 10)))  # the re-run failed on 'b'
    frame = store.read("K").set_index("normalized")
    assert frame.loc["a", "last_day"] == 5 and frame.loc["b", "last_day"] == 2
    assert not (journal_file(tmp_path, "K")).exists()


def test_only_fully_published_chunks_from_before_today_are_removed(tmp_path):
    store = at_t(tmp_path)
    store.write("old", rows(("a", 1, 1, 1, "valid", T - 86_400 * 2)))
    store.write("unpublished", rows(("b", 1, 1, 1, "valid", T - 86_400 * 2)))
    store.write("today", rows(("c", 1, 1, 1, "valid", T)))
    store.write("gone", rows(("left-pypi", 1, 1, 1, "valid", T - 86_400 * 2)))
    dataset = published(("a", T - 86_400 * 2), ("b", T - 86_400 * 5), ("c", T))
    removed = store.remove_published(dataset, pd.Series(["a", "b", "c"]), keep_fetched_since=counts_day_start(T))
    assert sorted(removed) == ["gone", "old"]
    assert store.keys() == ["today", "unpublished"]


def test_counts_day_starts_at_two_utc():
    start = counts_day_start(T)
    assert start <= T < start + 86_400 and (start - 2 * 3600) % 86_400 == 0


def rejected_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bad_journal_lines_are_set_aside_and_the_rest_of_the_chunk_reads(tmp_path, caplog):
    store = at_t(tmp_path)
    good = {"last_day": 1, "last_week": 2, "last_month": 3, "status": "valid", "updated_at": T}
    bad_lines = [
        "this is not JSON",
        json.dumps({**good, "normalized": "huge", "last_month": 2**64}),  # once: OverflowError on every read
        json.dumps({**good, "normalized": "negative", "last_day": -1}),
        json.dumps({**good, "normalized": "fraction", "last_day": 1.5}),
        json.dumps({**good, "normalized": "boolean", "last_day": True}),
        json.dumps({**good, "normalized": "odd-status", "status": "gone"}),
        json.dumps({**good, "normalized": "valid-without-counts", "last_week": None}),
        json.dumps({**good, "normalized": "empty-with-counts", "status": "empty"}),
        json.dumps({**good, "normalized": "nan-time", "updated_at": float("nan")}),
        json.dumps({**good, "normalized": "broken-clock", "updated_at": 0}),
        json.dumps({**good, "normalized": "from-the-future", "updated_at": T + 86_400}),
        json.dumps({**good, "normalized": "text-time", "updated_at": "yesterday"}),
        json.dumps({**good, "normalized": ""}),
        json.dumps(good),  # no name at all
        "[1, 2, 3]",
    ]
    journal = journal_file(tmp_path, "K")
    journal.write_text(
        "\n".join(
            [json.dumps({**good, "normalized": "a"}), *bad_lines,
             json.dumps({"normalized": "b", "last_day": None, "last_week": None, "last_month": None, "status": "empty", "updated_at": T}),
             json.dumps({**good, "normalized": "max", "last_month": MAX_COUNT, "updated_at": EARLIEST_UPDATED_AT})]
        )
        + "\n"
        + '{"normalized": "cut", "last_d'  # a killed run's last line: skipped, not set aside
    )
    with caplog.at_level(logging.WARNING, logger="pypi_downloads_dagster.dataset.store"):
        frame = store.read("K")
    assert sorted(frame["normalized"]) == ["a", "b", "max"]
    assert frame.set_index("normalized").loc["max", "last_month"] == MAX_COUNT
    assert str(frame["last_day"].dtype) == "Int64"
    warnings = [r for r in caplog.records if r.name == "pypi_downloads_dagster.dataset.store" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "chunk K" in message and f"{len(bad_lines)} line(s)" in message and "not valid JSON" in message
    rejected = tmp_path / "K.rejected.jsonl"
    records = rejected_records(rejected)
    assert [r["line"] for r in records] == bad_lines  # nothing lost: every line kept as it was
    assert all(r["chunk"] == "K" and r["reason"] for r in records)
    assert "huge: last_month" in records[1]["reason"]
    assert store.keys() == ["K"]  # the rejected file is not a chunk

    # Reading again (plans, merges and publishes all read) does not repeat them in the file.
    assert sorted(store.read_all()["K"]["normalized"]) == ["a", "b", "max"]
    assert store.fetched_since(T) == {"a", "b"}
    assert len(rejected_records(rejected)) == len(bad_lines)

    # Folding the journal keeps the good rows; the set-aside lines stay for a person.
    store.write("K", rows(("c", 4, 5, 6, "valid", T)))
    assert sorted(store.read("K")["normalized"]) == ["a", "b", "c", "max"]
    assert not journal.exists() and len(rejected_records(rejected)) == len(bad_lines)


def test_bad_rows_in_a_chunk_file_are_set_aside(tmp_path, caplog):
    store = at_t(tmp_path)
    frame = rows(
        ("a", 1, 2, 3, "valid", T),
        ("negative", -5, 2, 3, "valid", T),
        ("no-status", 1, 2, 3, None, T),
        ("future", 1, 2, 3, "valid", T + 10 * 86_400),
        ("nan-time", 1, 2, 3, "valid", float("nan")),
        (None, 1, 2, 3, "valid", T),
        ("b", None, None, None, "empty", T - 60),
    )
    # Written directly, as an older version or a hand edit could have left it.
    pq.write_table(pa.Table.from_pandas(frame, schema=FETCHED_SCHEMA, preserve_index=False), tmp_path / "K.parquet")
    with caplog.at_level(logging.WARNING, logger="pypi_downloads_dagster.dataset.store"):
        read = store.read("K")
    assert sorted(read["normalized"]) == ["a", "b"]
    records = rejected_records(tmp_path / "K.rejected.jsonl")
    assert len(records) == 5 and "negative: last_day -5" in records[0]["reason"]
    assert json.loads(records[0]["line"])["last_day"] == -5
    assert "chunk K" in caplog.text and "5 line(s)" in caplog.text
    assert store.keys() == ["K"]


def test_record_and_write_refuse_values_that_cannot_be_stored(tmp_path, caplog):
    store = at_t(tmp_path)
    with store.journal("K") as record:
        record(RecentCounts("a", 1, 2, 3, "valid", T))
        with pytest.raises(InvalidFetchRow, match="chunk K.*last_month"):
            record(RecentCounts("huge", 1, 2, MAX_COUNT + 1, "valid", T))
        with pytest.raises(InvalidFetchRow, match="updated_at"):
            record(RecentCounts("broken-clock", 1, 2, 3, "valid", 0.0))
        with pytest.raises(InvalidFetchRow, match="status"):
            record(RecentCounts("odd", 1, 2, 3, "maybe", T))
    assert [json.loads(line)["normalized"] for line in (journal_file(tmp_path, "K")).read_text().splitlines()] == ["a"]

    with caplog.at_level(logging.WARNING, logger="pypi_downloads_dagster.dataset.store"):
        store.write("K", rows(("b", 4, 5, 6, "valid", T), ("negative", -1, 5, 6, "valid", T), ("c", 1, 1, 1, "empty", T)))
    assert sorted(store.read("K")["normalized"]) == ["a", "b"]
    assert [r["line"] for r in rejected_records(tmp_path / "K.rejected.jsonl")] == [
        json.dumps({"normalized": "negative", "last_day": -1, "last_week": 5, "last_month": 6, "status": "valid", "updated_at": T}),
        json.dumps({"normalized": "c", "last_day": 1, "last_week": 1, "last_month": 1, "status": "empty", "updated_at": T}),
    ]
    assert "chunk K" in caplog.text and "2 line(s)" in caplog.text


def test_read_all_and_remove_published_survive_bad_lines(tmp_path):
    store = at_t(tmp_path)
    old = T - 86_400 * 2
    store.write("old", rows(("a", 1, 1, 1, "valid", old)))
    with (journal_file(tmp_path, "old")).open("w") as handle:
        handle.write(json.dumps({"normalized": "x", "last_day": 2**70, "last_week": 1, "last_month": 1, "status": "valid", "updated_at": old}) + "\n")
        handle.write("garbage\n")
    store.write("only-bad", rows(("b", 1, 1, 1, "valid", old)))
    (tmp_path / "only-bad.parquet").unlink()
    (journal_file(tmp_path, "only-bad")).write_text("garbage\n")
    assert store.keys() == ["old", "only-bad"]
    assert {key: sorted(frame["normalized"]) for key, frame in store.read_all().items()} == {"old": ["a"], "only-bad": []}
    removed = store.remove_published(published(("a", old)), pd.Series(["a", "b"]), keep_fetched_since=counts_day_start(T))
    assert removed == ["old"]  # a chunk with nothing readable stays: it may be a run that just began
    assert store.keys() == ["only-bad"]
    assert len(rejected_records(tmp_path / "old.rejected.jsonl")) == 2  # kept after the chunk went


def test_a_rerun_after_a_killed_run_journals_on_a_new_line(tmp_path):
    store = at_t(tmp_path)
    with store.journal("K") as record:
        record(RecentCounts("a", 1, 2, 3, "valid", T))
    with (journal_file(tmp_path, "K")).open("a") as handle:
        handle.write('{"normalized": "b", "last_d')  # killed mid-line
    with store.journal("K") as record:
        record(RecentCounts("c", 4, 5, 6, "valid", T))
    assert sorted(store.read("K")["normalized"]) == ["a", "c"]
    assert [r["line"] for r in rejected_records(tmp_path / "K.rejected.jsonl")] == ['{"normalized": "b", "last_d']


def test_a_read_while_another_run_folds_the_journal_misses_nothing(tmp_path, monkeypatch):
    """Issue 7, finding 4: the store read with exists-then-read, the file before the journal; a run
    folding its journal into the file in between made those rows vanish from the read (planned
    again, asked twice). The fold is made to land right after the reader's first read."""
    import pypi_downloads_dagster.dataset.store as module

    store = at_t(tmp_path)
    store.write("K", rows(("a", 1, 1, 1, "valid", T)))
    with store.journal("K") as record:
        record(RecentCounts("b", 2, 2, 2, "valid", T))
    folding = {"done": False}
    real_journal, real_table = module._read_journal, module.pq.read_table

    def then_fold(read):
        def wrapped(*args, **kwargs):
            result = read(*args, **kwargs)
            if not folding["done"]:
                folding["done"] = True  # the writer's own reads below go straight through
                at_t(tmp_path).write("K", rows())
            return result

        return wrapped

    monkeypatch.setattr(module, "_read_journal", then_fold(real_journal))
    monkeypatch.setattr(module.pq, "read_table", then_fold(real_table))
    assert sorted(store.read("K")["normalized"]) == ["a", "b"]
    assert folding["done"] and not (journal_file(tmp_path, "K")).exists()


def test_a_finished_run_never_deletes_the_journal_another_run_still_writes(tmp_path):
    """Issue 7, finding 3: one journal per chunk, unlinked by whichever run finished first, lost the
    answers another run of the same chunk was still appending (a kill before its own write lost them).
    Now each run has its own journal and folds and deletes only that one."""
    store = at_t(tmp_path)
    with store.journal("K", "run-1") as first, store.journal("K", "run-2") as second:
        first(RecentCounts("a", 1, 1, 1, "valid", T))
        second(RecentCounts("b", 2, 2, 2, "valid", T))
        store.write("K", rows(("a", 1, 1, 1, "valid", T)), "run-1")  # run 1 finishes first
        second(RecentCounts("c", 3, 3, 3, "valid", T))  # run 2 goes on, then is killed: no write
    assert not journal_file(tmp_path, "K", "run-1").exists()
    assert journal_file(tmp_path, "K", "run-2").exists()
    assert sorted(store.read("K")["normalized"]) == ["a", "b", "c"]
    assert store.fetched_since(T) == {"a", "b", "c"}


def test_a_chunk_a_run_holds_is_never_removed_under_it(tmp_path):
    store = at_t(tmp_path)
    old = T - 86_400 * 2
    store.write("held", rows(("a", 1, 1, 1, "valid", old)))
    store.write("free", rows(("b", 1, 1, 1, "valid", old)))
    removed = store.remove_published(published(("a", old), ("b", old)), pd.Series(["a", "b"]), keep_fetched_since=T, busy={"held"})
    assert removed == ["free"] and store.keys() == ["held"]


def test_plans_are_stored_per_chunk_and_writes_leave_no_temp_files(tmp_path):
    store = at_t(tmp_path)
    store.save_plan("P-00000", ["a", "b"])
    store.save_plan("P-00001", ["c"])
    assert store.planned("P-00000") == ["a", "b"] and store.planned("P-00001") == ["c"]
    with pytest.raises(KeyError):
        store.planned("P-00002")
    store.drop_plans(["P-00000"])
    with pytest.raises(KeyError):
        store.planned("P-00000")
    store.write("P-00001", rows(("c", 1, 1, 1, "valid", T)))
    assert store.keys() == ["P-00001"]  # plans are not fetched chunks
    assert not [path for path in tmp_path.rglob(".tmp-*")]
    with pytest.raises(ValueError):
        store.save_plan("../escape", ["x"])


def test_the_io_manager_never_leaves_half_a_value(tmp_path):
    """A value that fails to pickle halfway (or a crash mid-write) leaves the previous value whole:
    Dagster's own pickle IO manager truncates the file first."""
    import pickle

    import dagster as dg

    from pypi_downloads_dagster.orchestration.resources import AtomicFilesystemIOManager

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("halfway")

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        manager = AtomicFilesystemIOManager().create_io_manager(dg.build_init_resource_context(instance=instance))
        context = dg.build_output_context(asset_key=dg.AssetKey("pypi_index"))
        manager.handle_output(context, {"projects": ["a", "b"]})
        with pytest.raises(pickle.PicklingError):
            manager.handle_output(context, {"projects": ["a", "b", "c"], "bad": Unpicklable()})
        loaded = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("pypi_index"), upstream_output=context))
        assert loaded == {"projects": ["a", "b"]}
        assert not list(tmp_path.rglob(".tmp-*"))
