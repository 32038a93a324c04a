"""The Dagster layer, kept thin: assets, jobs, schedules, sensors, resources, partitions, leases, definitions."""
