"""`pypi-downloads-dagster` as a person runs it: a subprocess against the local fakes. It stops when
told, fails fast when pypistats is down, refuses bad settings in one line, and explains itself."""

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pypi_downloads_dagster.dataset.store import FetchStore
from pypi_downloads_dagster_tests.fakes.env import service_env
from pypi_downloads_dagster_tests.fakes.hub import FakeHub
from pypi_downloads_dagster_tests.fakes.pypi_index import FakeIndex
from pypi_downloads_dagster_tests.fakes.pypistats import FakePypistats

pytestmark = pytest.mark.e2e

REPO = "tester/pypi-downloads"
TOKEN = "hf_cli_secret_token"
NAMES = [f"pkg{i:03d}" for i in range(300)]
STATS = {name: (1, 7, 30) for name in NAMES}
CLI = [sys.executable, "-m", "pypi_downloads_dagster.cli"]


@pytest.fixture
def services(tmp_path):
    hub = FakeHub(token=TOKEN)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml", home)
    with FakeIndex(NAMES) as index, FakePypistats(STATS, per_second=1000, per_minute=60000) as stats, hub.serve() as server:
        # 10 requests a second: a chunk of 100 takes ~10 s, long enough to be interrupted.
        env = service_env(
            index=index, stats=stats, hub_url=server.url, repo=REPO, token=TOKEN, dagster_home=home,
            max_per_second=10, max_per_minute=600,
        )
        yield {"index": index, "stats": stats, "hub": hub, "env": env, "home": home}


def start_sync(env, *args):
    return subprocess.Popen(
        [*CLI, "sync", "--chunk-size", "100", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_chunk_stops_the_whole_cycle_and_keeps_the_answers(services, signum, status):
    stats, hub = services["stats"], services["hub"]
    process = start_sync(services["env"])
    wait_for(lambda: len(stats.log) >= 20, 120, "the first chunk to be under way")
    process.send_signal(signum)
    sent = time.monotonic()
    out, _ = process.communicate(timeout=60)
    took = time.monotonic() - sent
    assert process.returncode == status, out
    assert took < 10, f"took {took:.1f}s to stop"
    asked = len(stats.log)
    time.sleep(1)
    assert len(stats.log) == asked, "no request after the process ended"
    assert asked < 110, "no second chunk started"
    last = out.strip().splitlines()[-1]
    assert last.startswith("[sync] summary: STOPPED by " + signal.Signals(signum).name) and "nothing published" in last, out
    assert not hub.repo_exists(REPO), "nothing published"
    store = FetchStore.in_storage(services["home"] / "storage")
    kept = sum(len(store.read(key)) for key in store.keys())
    assert kept >= 15, f"the answers received were journaled ({kept})"
    assert "Traceback" not in out


def test_an_unreachable_stats_api_fails_fast_with_the_cause(services):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    env = {**services["env"], "PYPISTATS_API_URL": dead, "PYPISTATS_DOWN_AFTER": "3"}
    started = time.monotonic()
    result = subprocess.run([*CLI, "sync", "--chunk-size", "100"], env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert took < 60, f"took {took:.0f}s"
    out = result.stdout
    assert "ServiceDown" in out and "Connection refused" in out, out
    assert "not starting the 2 chunks left" in out
    assert out.count("FAILED:") == 1, "one chunk tried, not three"


@pytest.mark.parametrize(
    "name, value",
    [
        ("PYPISTATS_MAX_PER_SECOND", "abc"),
        ("PYPISTATS_MAX_PER_MINUTE", "nan"),
        ("HF_REPO_ID", "no-namespace"),
        ("PP_URL", "http://alice:pa#ss@proxy.example:3128"),
        ("PP_URL", "http://alice:s3cret@proxy.example:port"),
        ("PYPI_DOWNLOADS_CHUNK_ATTEMPTS", "0"),
    ],
)
def test_a_bad_setting_is_one_line_exit_2_no_traceback_no_secret(services, name, value):
    env = {**services["env"], name: value}
    result = subprocess.run([*CLI, "sync"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    message = lines[-1]
    assert name in message and "Traceback" not in result.stderr, result.stderr
    for secret in ("alice", "s3cret", "pa#ss", "proxy.example"):
        assert secret not in result.stdout + result.stderr
    assert len(services["stats"].log) == 0 and not services["index"].requests


@pytest.mark.parametrize("args", [["--max-row-loss-share", "-1"], ["--max-row-loss-share", "nan"], ["--chunk-size", "0"]])
def test_bad_options_fail_before_any_work(services, args):
    result = subprocess.run([*CLI, "sync", *args], env=services["env"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert args[0] in result.stderr.splitlines()[-1]
    assert not services["index"].requests


def test_help_names_the_defaults_the_environment_and_the_exit_codes():
    result = subprocess.run([*CLI, "sync", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    text = result.stdout
    for expected in ("(default: 1000)", "(default: 30)", "(default: 0.05)", "DAGSTER_HOME", "PP_URL", "HF_TOKEN", "130/143"):
        assert expected in text, expected
    assert "Ctrl-C" in text and text.count("nothing is published.") == 1


def test_a_terminated_dagster_run_stops_at_once_and_keeps_its_answers(services):
    """The same for a run outside `sync`: Dagster's termination (SIGTERM to the run's process, as
    the UI's Terminate does) stops the chunk's requests at once; its answers stay journaled."""
    from dagster._core.instance.ref import InstanceRef

    import dagster as dg

    env, stats = services["env"], services["stats"]
    module = ["-m", "pypi_downloads_dagster.definitions"]
    plan = subprocess.run(["dagster", "job", "execute", *module, "-j", "plan_refresh"], env=env, capture_output=True, text=True, timeout=180)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(services["home"]))) as instance:
        key = sorted(instance.get_dynamic_partitions("recent_stats_chunks"))[0]
    tags = '{"dagster/partition": "%s"}' % key
    run = subprocess.Popen(
        ["dagster", "job", "execute", *module, "-j", "fetch_chunk", "--tags", tags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    wait_for(lambda: len(stats.log) >= 20, 120, "the chunk to be under way")
    run.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    run.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    asked = len(stats.log)
    time.sleep(1)
    assert len(stats.log) == asked < 100, "no request after the termination"
    assert len(FetchStore.in_storage(services["home"] / "storage").read(key)) >= 15
