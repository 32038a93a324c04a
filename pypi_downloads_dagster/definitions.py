"""The code location (`-m pypi_downloads_dagster.definitions`): the definitions of the Dagster layer."""

from pypi_downloads_dagster.orchestration.definitions import build_definitions, defs, resources_from_env

__all__ = ["build_definitions", "defs", "resources_from_env"]
