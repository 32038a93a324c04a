import pandas as pd

from pypi_downloads_dagster.fetch_store import FetchStore
from pypi_downloads_dagster.pypistats import RecentCounts, counts_day_start

T = 1_800_000_000.0


def rows(*items):
    frame = pd.DataFrame(items, columns=["normalized", "last_day", "last_week", "last_month", "status", "updated_at"])
    for column in ("last_day", "last_week", "last_month"):
        frame[column] = frame[column].astype("Int64")
    return frame


def published(*items):
    """A published dataset with (name, updated_at)."""
    return pd.DataFrame({"name": [n for n, _ in items], "updated_at": [t for _, t in items]})


def test_a_killed_run_keeps_every_answer_it_journaled(tmp_path):
    store = FetchStore(tmp_path)
    with store.journal("K") as record:
        record(RecentCounts("a", 1, 2, 3, "valid", T))
        record(RecentCounts("b", None, None, None, "empty", T))
    (tmp_path / "K.journal.jsonl").open("a").write('{"normalized": "c", "last_d')  # cut off mid-line
    assert store.keys() == ["K"]
    frame = store.read("K").set_index("normalized")
    assert frame.loc["a", "last_month"] == 3 and frame.loc["b", "status"] == "empty" and "c" not in frame.index
    assert store.fetched_since("K", T) == {"a", "b"} and store.fetched_since("K", T + 1) == set()


def test_write_folds_the_journal_and_keeps_rows_a_rerun_missed(tmp_path):
    store = FetchStore(tmp_path)
    store.write("K", rows(("a", 1, 1, 1, "valid", T), ("b", 2, 2, 2, "valid", T)))
    with store.journal("K") as record:
        record(RecentCounts("a", 5, 5, 5, "valid", T + 10))
    store.write("K", rows(("a", 5, 5, 5, "valid", T + 10)))  # the re-run failed on 'b'
    frame = store.read("K").set_index("normalized")
    assert frame.loc["a", "last_day"] == 5 and frame.loc["b", "last_day"] == 2
    assert not (tmp_path / "K.journal.jsonl").exists()


def test_only_fully_published_chunks_from_before_today_are_removed(tmp_path):
    store = FetchStore(tmp_path)
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
