"""Offline demo: the whole cycle against local services, no network needed.

    python -m pypi_downloads_dagster_tests.demo [--projects 300] [--out data/demo]
    python -m pypi_downloads_dagster_tests.demo --serve   # only start the services, print their variables

The full demo starts fresh (it removes `<out>` first, and says so). --serve deletes nothing: the
previous demo's files stay in `<out>`, and its services use an instance of their own,
`<out>/serve_home`, kept from one --serve to the next.

Starts a PyPI simple index, a pypistats API (its real limits, with time running 10-20x faster) and a
Hugging Face Hub on 127.0.0.1, seeds the Hub with a dataset in the earlier float layout, then runs
`pypi-downloads-dagster sync` twice as a user would: the first run publishes, the second finds
nothing stale. The published files are copied to `<out>/published/` to look at.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pypi_downloads_dagster.dataset.schema import normalize_name

REPO = "demo/pypi-downloads"
TOKEN = "hf_demo_token"
DAY = 86_400


def demo_data(projects: int, seed: int = 0):
    """Index names, pypistats counts and an old dataset covering half the index."""
    rng = np.random.default_rng(seed)
    stems = ["Django", "Flask", "requests", "numpy", "PyYAML", "zope.interface", "Foo_Bar", "attrs", "Jinja2", "typing-extensions"]
    names = stems + [f"{'Pkg' if i % 5 == 0 else 'pkg'}-{i:04d}{'.utils' if i % 7 == 0 else ''}" for i in range(projects - len(stems))]
    monthly = np.floor(rng.lognormal(5, 2.5, len(names))).astype(int)
    counts = {
        normalize_name(name): (int(m // 30), int(m // 4), int(m))
        for name, m in zip(names, monthly)
        if rng.random() < 0.85  # the rest are unknown to pypistats: 'empty'
    }
    now = time.time()
    known = names[: len(names) // 2] + ["left-the-index"]
    old = pd.DataFrame(
        {
            "name": known,
            "url": [f"https://pypi.org/simple/{normalize_name(n)}/" for n in known],
            "last_day": rng.integers(0, 100, len(known)).astype(float),
            "last_week": rng.integers(0, 700, len(known)).astype(float),
            "last_month": rng.integers(0, 3000, len(known)).astype(float),
            # Some fresh (kept as they are), some stale (fetched again).
            "updated_at": now - rng.choice([2, 10, 40, 90], len(known)) * DAY,
        }
    )
    return names, counts, old


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=300)
    parser.add_argument("--out", default="data/demo")
    parser.add_argument("--serve", action="store_true", help="start the services and wait; print the variables to use them")
    args = parser.parse_args(argv)

    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from pypi_downloads_dagster_tests.fakes.env import service_env
    from pypi_downloads_dagster_tests.fakes.hub import FakeHub
    from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
    from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

    out = Path(args.out).resolve()
    if not args.serve and out.exists():
        # Only the full demo starts fresh; --serve deletes nothing.
        print(f"demo: starting fresh: removing the previous demo in {out}")
        shutil.rmtree(out)
    # --serve has an instance of its own: the full demo's holds the rows it fetched, which a plan
    # counts as fetched, so against the new Hub it would find nothing to do.
    home = out / ("serve_home" if args.serve else "dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    shipped = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"  # present in a checkout
    if shipped.is_file() and not (home / "dagster.yaml").exists():
        shutil.copy(shipped, home)
    names, counts, old = demo_data(args.projects)
    csv = io.StringIO()
    old.to_csv(csv, index=False)
    hub = FakeHub(token=TOKEN)
    hub.create_dataset_repo(REPO, {"dataset.csv": csv.getvalue().encode()})

    with FakeIndex(names) as index, FakePypistats(
        counts, per_second=5, per_minute=30, second_window=0.1, minute_window=3.0
    ) as stats, hub.serve() as hub_server:
        # The fake's limits are the real ones with time running 10x (second) and 20x (minute)
        # faster: 50/s and 600/min. Pace for those.
        env = service_env(
            index=index, stats=stats, hub_url=hub_server.url, repo=REPO, token=TOKEN,
            dagster_home=home, max_per_second=50, max_per_minute=600,
        )
        if args.serve:
            return serve(env)
        print(f"demo: index {index.index_url} ({len(names)} projects), pypistats {stats.api_url}, Hub {hub_server.url}")
        print(f"demo: the Hub repo {REPO} holds an old dataset.csv with {len(old)} rows; DAGSTER_HOME={home}")
        status = 0
        for attempt in ("first", "second"):
            print(f"\ndemo: {attempt} sync\n", flush=True)
            command = [sys.executable, "-m", "pypi_downloads_dagster.cli", "sync", "--chunk-size", "100"]
            result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            print(result.stdout, end="")
            status = status or result.returncode
        rate_limited = sum(1 for entry in stats.log if entry.status == 429)
        print(f"\ndemo: pypistats answered {len(stats.log)} requests, {rate_limited} refused for rate limiting")

    published = out / "published"
    published.mkdir()
    for path, data in hub.files(REPO).items():
        (published / path).write_bytes(data)
    print("demo: Hub commits:")
    for commit in hub.commits(REPO):
        print(f"  {commit.oid[:10]}  {commit.summary}  ({', '.join(sorted(commit.changed))})")
    print(f"demo: published files copied to {published}")
    return status


def serve(env: dict) -> int:
    """Keep the services up for `dg dev`, `dagster job execute` or `sync` in another shell."""
    print("# Local services are up. In another shell, export these and use dg, dagster or sync as usual.")
    print("# The Hub starts again from the old dataset.csv; DAGSTER_HOME keeps what earlier --serve sessions left")
    print("# (remove that folder for a clean instance); the full demo's files are left as they were.")
    for name in ("DAGSTER_HOME", "PYPI_INDEX_URL", "PYPISTATS_API_URL", "PYPISTATS_MAX_PER_SECOND",
                 "PYPISTATS_MAX_PER_MINUTE", "HF_REPO_ID", "HF_TOKEN", "HF_ENDPOINT"):
        print(f"export {name}={env[name]}")
    print("export HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
