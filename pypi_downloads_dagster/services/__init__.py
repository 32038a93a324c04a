"""The services the project reads from: the PyPI simple index, the pypistats API, ClickHouse, and the one HTTP layer they share."""
