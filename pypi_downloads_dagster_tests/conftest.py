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
