"""Synthetic datasets for tests: heavy-tailed counts and a mix of valid, empty and never-fetched rows."""

import numpy as np
import pandas as pd

from pypi_downloads_dagster.dataset.schema import COUNT_COLUMNS, conform

NEWEST_FETCH = 1_709_251_200.0  # 2024-03-01 00:00 UTC


def synthetic_dataset(
    rows: int, *, seed: int = 0, valid_share: float = 0.5, empty_share: float | None = None, log_mean: float = 4.0
) -> pd.DataFrame:
    """A conformed dataset of `rows` projects named `Pkg-00000`...; counts log-normal (with zeros),
    fetch times spread over the 60 days before NEWEST_FETCH so some rows are stale."""
    rng = np.random.default_rng(seed)
    empty_share = (1 - valid_share) / 2 if empty_share is None else empty_share
    kind = rng.choice(["valid", "empty", "never"], size=rows, p=[valid_share, empty_share, 1 - valid_share - empty_share])
    month = np.floor(rng.lognormal(log_mean, 2.5, rows))
    counts = {"last_month": month, "last_week": np.floor(month / 4), "last_day": np.floor(month / 30)}
    return conform(
        pd.DataFrame(
            {
                "name": [f"Pkg-{i:05d}" for i in range(rows)],
                "url": [f"https://pypi.org/simple/pkg-{i:05d}/" for i in range(rows)],
                **{c: np.where(kind == "valid", counts[c], np.nan) for c in COUNT_COLUMNS},
                "status": np.where(kind == "never", None, kind),
                "updated_at": np.where(kind == "never", np.nan, NEWEST_FETCH - rng.uniform(0, 60 * 86400, rows)),
            }
        )
    )
