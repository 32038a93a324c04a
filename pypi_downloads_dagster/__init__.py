"""pypi-downloads-dagster: a Dagster project that keeps a dataset of PyPI download counts on the Hub."""

__version__ = "0.1.0"
