"""Partitions: `recent_stats` is split into chunks of the stale plan, added by `stale_packages`."""

import dagster as dg

#: One key per chunk, `<plan id>-<chunk number>`, e.g. `20261124T020000-00003`.
recent_stats_chunks = dg.DynamicPartitionsDefinition(name="recent_stats_chunks")
