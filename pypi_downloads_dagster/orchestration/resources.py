"""Dagster resources: thin, configurable handles on the services (index, pypistats, dataset repo)
and on the proxy pool they all go out through. The work is done by the plain modules."""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any, Optional

import dagster as dg
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager
from pydantic import Field

from pypi_downloads_dagster.services.clickhouse import DEFAULT_URL as CLICKHOUSE_URL, DEFAULT_USER as CLICKHOUSE_USER, ClickHouseClient
from pypi_downloads_dagster.services.http import EgressGate, HttpClient, Pacing, RetryPolicy, parse_proxy_pool
from pypi_downloads_dagster.publishing.hub import DatasetRepo, HubDatasetRepo, LocalDatasetRepo
from pypi_downloads_dagster.services.pypi_index import ProjectIndex, fetch_index
from pypi_downloads_dagster.services.pypistats import DEFAULT_API_URL, daily_capacity

DEFAULT_INDEX_URL = "https://pypi.org/simple/"
DEFAULT_LOCAL_DIR = "./data/dataset"


class ProxyPool(dg.ConfigurableResource):
    """The egresses requests leave through: comma-separated proxy URLs (`PP_URL`), or direct when
    empty. Proxy URLs may hold credentials: bind this to `EnvVar("PP_URL")` so the UI hides them."""

    urls: str = Field(default="", description="Comma-separated proxy URLs; empty means direct.")

    def egresses(self):
        return parse_proxy_pool(self.urls)


class _RetrySettings(dg.ConfigurableResource):
    retry_attempts: int = Field(default=6, description="Attempts per request (429, 5xx, connection errors).")
    retry_initial_wait: float = Field(default=0.5, description="First backoff in seconds; doubles per attempt.")
    retry_max_wait: float = Field(default=60.0, description="Longest backoff in seconds.")
    timeout: float = Field(default=60.0, description="Seconds to wait for an answer.")
    rate_limited_wait: float = Field(default=10.0, description="Seconds an egress rests after a 429.")
    down_after: float = Field(
        default=60.0, gt=0, description="Give up when every egress has failed this many seconds in a row (the service is down)."
    )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            self.retry_attempts, self.retry_initial_wait, self.retry_max_wait, self.timeout, self.rate_limited_wait,
            down_after=self.down_after,
        )


class PypiIndexSource(_RetrySettings):
    """The PyPI simple index (`PYPI_INDEX_URL`)."""

    url: str = Field(default=DEFAULT_INDEX_URL, description="Simple index URL.")
    proxy_pool: ProxyPool = Field(default_factory=ProxyPool)

    def fetch(self, *, min_projects: int = 1) -> ProjectIndex:
        client = HttpClient(self.proxy_pool.egresses(), retry=self.retry_policy())
        return fetch_index(client, self.url, min_projects=min_projects)


class PypistatsApi(_RetrySettings):
    """The pypistats.org API (`PYPISTATS_API_URL`), paced per egress below its per-IP limits."""

    url: str = Field(default=DEFAULT_API_URL, description="API base URL.")
    max_per_second: float = Field(default=5.0, description="Requests per second per egress (server limit: 5).")
    max_per_minute: float = Field(default=30.0, description="Requests per minute per egress (server limit: 30).")
    timeout: float = Field(default=30.0, description="Seconds to wait for an answer.")
    proxy_pool: ProxyPool = Field(default_factory=ProxyPool)

    def client(self, gate: Optional[EgressGate] = None) -> HttpClient:
        """A client pacing each egress; with a `gate`, only through the egresses it holds (leases)."""
        return HttpClient(
            self.proxy_pool.egresses(),
            pacing=Pacing(self.max_per_second, self.max_per_minute),
            retry=self.retry_policy(),
            gate=gate,
        )

    def daily_capacity(self) -> int:
        """Projects all egresses together can fetch in a day at this pacing."""
        return daily_capacity(Pacing(self.max_per_second, self.max_per_minute).interval, len(self.proxy_pool.egresses()))


class ClickHouseSource(dg.ConfigurableResource):
    """ClickPy's public ClickHouse (`CLICKHOUSE_URL`, `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`):
    the bulk counts source, used when `COUNTS_SOURCE=clickhouse` (`enabled`). The password is a
    secret: bind it to `EnvVar("CLICKHOUSE_PASSWORD")`."""

    enabled: bool = Field(default=False, description="COUNTS_SOURCE=clickhouse: counts and history come from ClickHouse.")
    url: str = Field(default=CLICKHOUSE_URL, description="ClickHouse HTTP(S) URL.")
    user: str = Field(default=CLICKHOUSE_USER, description="ClickHouse user.")
    password: Optional[str] = Field(default=None, description="ClickHouse password (secret); ClickPy's demo user has none.")
    cross_check_sample: int = Field(default=50, ge=0, description="Projects asked of pypistats each bulk cycle to check the source.")

    def client(self) -> ClickHouseClient:
        return ClickHouseClient(self.url, self.user, self.password or "")

    @property
    def counts_source(self) -> str:
        return "clickhouse" if self.enabled else "pypistats"


class DatasetRepoResource(dg.ConfigurableResource):
    """Where the dataset is read from and published to: the Hub dataset repo `HF_REPO_ID`, or the
    local folder `PYPI_DOWNLOADS_DIR` when no repo is set. The token is a secret: bind it to
    `EnvVar("HF_TOKEN")`."""

    repo_id: Optional[str] = Field(default=None, description="Hub dataset repo 'namespace/name'; unset: local folder.")
    token: Optional[str] = Field(default=None, description="Hub token (secret); unset: huggingface_hub's own login.")
    endpoint: Optional[str] = Field(default=None, description="Hub endpoint; unset: huggingface_hub's default.")
    local_dir: str = Field(default=DEFAULT_LOCAL_DIR, description="Folder standing in for the repo.")

    def repo(self) -> DatasetRepo:
        if self.repo_id:
            return HubDatasetRepo(self.repo_id, token=self.token or None, endpoint=self.endpoint or None)
        return LocalDatasetRepo(self.local_dir)


class _AtomicPickleIOManager(PickledObjectFilesystemIOManager):
    """Dagster's pickle IO manager, writing each value to a temp file, fsynced, then renamed over
    the old one: a run reading an asset (the publish reads `pypi_index`) while another writes it
    gets the old value or the new one, never half a file, on a local disk or a shared folder."""

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path) -> None:
        folder = os.fspath(path.parent)
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", delete=False) as handle:
            try:
                pickle.dump(obj, handle, pickle.HIGHEST_PROTOCOL)
                handle.flush()
                os.fsync(handle.fileno())
            except BaseException:
                os.unlink(handle.name)
                raise
        os.replace(handle.name, os.fspath(path))


class AtomicFilesystemIOManager(dg.ConfigurableIOManagerFactory):
    """Where asset values live between runs: pickles in the instance's storage folder
    (`$DAGSTER_HOME/storage`, or `$PYPI_DOWNLOADS_SHARED_DIR/storage` with the Postgres instance),
    written atomically."""

    def create_io_manager(self, context: dg.InitResourceContext) -> _AtomicPickleIOManager:
        return _AtomicPickleIOManager(base_dir=context.instance.storage_directory())
