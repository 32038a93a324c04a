"""Test-wide setup: huggingface_hub must talk to the local fake Hub only (see REFERENCE.md section 4)."""

import os
import tempfile

# Set before anything imports huggingface_hub: it reads these at import time.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="pypi-downloads-hf-home-"))
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_REPO_ID", None)
os.environ.pop("PP_URL", None)


import pytest  # noqa: E402 - after the environment above


@pytest.fixture
def no_backoff(monkeypatch):
    """huggingface_hub retries a failed HEAD after 1, 2, 4, 8, 8 s: keep the retries, skip the waits."""
    from types import SimpleNamespace

    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda seconds: None))
