"""The environment variables of README.md, read and checked in one place, once, at start.

A bad value is a `SettingsError` whose one-line message names the variable and what is expected,
and never echoes a secret: `PP_URL` entries are named by position, URLs shown without credentials.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Optional
from urllib.parse import urlsplit

from pypi_downloads_dagster.services.http import parse_proxy_pool, redact_url
from pypi_downloads_dagster.services.clickhouse import DEFAULT_URL as CLICKHOUSE_URL, DEFAULT_USER as CLICKHOUSE_USER
from pypi_downloads_dagster.services.pypistats import DEFAULT_API_URL
from pypi_downloads_dagster.orchestration.resources import DEFAULT_INDEX_URL, DEFAULT_LOCAL_DIR

#: Hub repo ids: `namespace/name`, letters, digits, `-`, `_`, `.` (the Hub's own rule).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


#: Where the counts come from: the first is the default.
COUNTS_SOURCES = ("pypistats", "clickhouse")


class SettingsError(ValueError):
    """A setting that cannot work; the message names the variable and says what is expected."""


@dataclasses.dataclass(frozen=True)
class Settings:
    index_url: str = DEFAULT_INDEX_URL
    stats_url: str = DEFAULT_API_URL
    max_per_second: float = 5.0
    max_per_minute: float = 30.0
    down_after_seconds: float = 60.0
    proxy_urls_set: bool = False  # PP_URL itself is a secret: only passed on as an EnvVar
    egresses: int = 1
    hf_repo_id: Optional[str] = None
    hf_token_set: bool = False
    hf_endpoint: Optional[str] = None
    local_dir: str = DEFAULT_LOCAL_DIR
    deploy_span_seconds: float = 300.0
    chunk_attempts: int = 3
    sensor_interval_seconds: int = 30
    counts_source: str = "pypistats"
    clickhouse_url: str = CLICKHOUSE_URL
    clickhouse_user: str = CLICKHOUSE_USER
    clickhouse_password_set: bool = False  # CLICKHOUSE_PASSWORD is a secret: only passed on as an EnvVar
    cross_check_sample: int = 50


def read_settings(env: Mapping[str, str]) -> Settings:
    """Every setting from `env`, checked. Raises SettingsError for the first bad one."""
    pp_url = env.get("PP_URL", "").strip()
    try:
        egresses = len(parse_proxy_pool(pp_url))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return Settings(
        index_url=_url(env, "PYPI_INDEX_URL", DEFAULT_INDEX_URL),
        stats_url=_url(env, "PYPISTATS_API_URL", DEFAULT_API_URL),
        max_per_second=_positive(env, "PYPISTATS_MAX_PER_SECOND", 5.0),
        max_per_minute=_positive(env, "PYPISTATS_MAX_PER_MINUTE", 30.0),
        down_after_seconds=_positive(env, "PYPISTATS_DOWN_AFTER", 60.0),
        proxy_urls_set=bool(pp_url),
        egresses=egresses,
        hf_repo_id=_repo_id(env),
        hf_token_set=bool(env.get("HF_TOKEN", "").strip()),
        hf_endpoint=_url(env, "HF_ENDPOINT", None),
        local_dir=env.get("PYPI_DOWNLOADS_DIR", "").strip() or DEFAULT_LOCAL_DIR,
        deploy_span_seconds=_positive(env, "PYPI_DOWNLOADS_DEPLOY_SPAN", 300.0),
        chunk_attempts=_whole(env, "PYPI_DOWNLOADS_CHUNK_ATTEMPTS", 3),
        sensor_interval_seconds=_whole(env, "PYPI_DOWNLOADS_SENSOR_INTERVAL", 30),
        counts_source=_choice(env, "COUNTS_SOURCE", COUNTS_SOURCES),
        clickhouse_url=_url(env, "CLICKHOUSE_URL", CLICKHOUSE_URL),
        clickhouse_user=_raw(env, "CLICKHOUSE_USER") or CLICKHOUSE_USER,
        clickhouse_password_set=bool(_raw(env, "CLICKHOUSE_PASSWORD")),
        cross_check_sample=_count(env, "CROSS_CHECK_SAMPLE", 50),
    )


def _raw(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _raw(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a positive number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive number, got {raw!r}")
    return value


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _raw(env, name)
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _raw(env, name)
    if not raw:
        return default
    if not raw.isdigit():
        raise SettingsError(f"{name} must be a whole number (0 or more), got {raw!r}")
    return int(raw)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = _raw(env, name).lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _url(env: Mapping[str, str], name: str, default: Optional[str]) -> Optional[str]:
    raw = _raw(env, name)
    if not raw:
        return default
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise SettingsError(f"{name} has a port that is not a number (the URL is not shown: it may hold credentials)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name} must be an http(s) URL like https://host/path, got {redact_url(raw)!r}")
    return raw


def _repo_id(env: Mapping[str, str]) -> Optional[str]:
    raw = _raw(env, "HF_REPO_ID")
    if not raw:
        return None
    if not _REPO_ID.match(raw) or ".." in raw or "--" in raw:
        raise SettingsError(f"HF_REPO_ID must look like 'namespace/name' (letters, digits, '-', '_', '.'), got {raw!r}")
    return raw
