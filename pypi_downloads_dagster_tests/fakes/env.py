"""The environment that points the project (README.md's variables) at running local fakes."""

import os


def service_env(*, index, stats, hub_url: str, repo: str, token: str, dagster_home, max_per_second: float, max_per_minute: float, **extra) -> dict:
    """`os.environ` plus the project's variables for these fakes; `extra` adds or overrides any."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "PYPI_INDEX_URL": index.index_url,
        "PYPISTATS_API_URL": stats.api_url,
        "PYPISTATS_MAX_PER_SECOND": str(max_per_second),
        "PYPISTATS_MAX_PER_MINUTE": str(max_per_minute),
        "HF_REPO_ID": repo,
        "HF_TOKEN": token,
        "HF_ENDPOINT": hub_url,
        **{key: str(value) for key, value in extra.items()},
    }
