"""Local stand-ins for the services the project talks to, speaking their real HTTP protocols.

Every test that crosses HTTP uses these, and `python -m pypi_downloads_dagster_tests.demo` runs
them for an offline demo of the whole cycle.
"""
