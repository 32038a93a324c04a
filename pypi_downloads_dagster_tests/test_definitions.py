"""The code location as the environment configures it (the one place that reads README's variables)."""

import pytest
import dagster as dg

from pypi_downloads_dagster.definitions import build_definitions, resources_from_env

SECRET_ENV = {
    "PP_URL": "http://alice:pr0xy-pass@10.0.0.1:3128,http://bob:other-pass@10.0.0.2:3128",
    "HF_TOKEN": "hf_very_secret",
    "HF_REPO_ID": "someone/pypi-downloads",
}


def test_the_code_location_loads_with_its_jobs_schedule_and_sensor():
    defs = build_definitions({})
    dg.Definitions.validate_loadable(defs)
    assert {job.name for job in defs.jobs} >= {"plan_refresh", "fetch_chunk", "publish_dataset"}
    assert defs.resolve_schedule_def("daily_refresh").cron_schedule == "0 2 * * *"
    assert defs.resolve_sensor_def("daily_cycle").minimum_interval_seconds == 30


def test_secrets_go_in_as_env_vars_never_as_values():
    resources = resources_from_env(SECRET_ENV)
    assert isinstance(resources["dataset_repo"].token, dg.EnvVar) and resources["dataset_repo"].token == "HF_TOKEN"
    assert isinstance(resources["pypistats"].proxy_pool.urls, dg.EnvVar)
    shown = repr(resources)
    for secret in ("pr0xy-pass", "other-pass", "hf_very_secret"):
        assert secret not in shown


def test_settings_come_from_the_environment_with_defaults():
    resources = resources_from_env({"PYPISTATS_MAX_PER_SECOND": "2.5", "PYPI_DOWNLOADS_DEPLOY_SPAN": "60"})
    assert resources["pypistats"].max_per_second == 2.5 and resources["pypistats"].max_per_minute == 30
    assert resources["cycle"].deploy_span_seconds == 60
    assert resources["dataset_repo"].repo_id is None and resources["dataset_repo"].local_dir == "./data/dataset"
    assert resources["index_source"].url == "https://pypi.org/simple/"


@pytest.mark.parametrize("name, value", [("PYPISTATS_MAX_PER_MINUTE", "thirty"), ("PYPI_DOWNLOADS_CHUNK_ATTEMPTS", "-1")])
def test_a_bad_setting_names_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        resources_from_env({name: value})
