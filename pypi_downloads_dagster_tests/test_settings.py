"""Settings are read and checked once: a bad value names its variable, never echoes a secret."""

import pytest

from pypi_downloads_dagster.settings import SettingsError, read_settings

BAD = [
    ("PYPISTATS_MAX_PER_SECOND", "abc", "must be a positive number"),
    ("PYPISTATS_MAX_PER_SECOND", "nan", "must be a positive number"),
    ("PYPISTATS_MAX_PER_MINUTE", "inf", "must be a positive number"),
    ("PYPISTATS_MAX_PER_MINUTE", "0", "must be a positive number"),
    ("PYPI_DOWNLOADS_DEPLOY_SPAN", "-5", "must be a positive number"),
    ("PYPI_DOWNLOADS_CHUNK_ATTEMPTS", "2.5", "whole number"),
    ("PYPI_DOWNLOADS_SENSOR_INTERVAL", "0", "whole number"),
    ("HF_REPO_ID", "just-a-name", "namespace/name"),
    ("HF_REPO_ID", "a/b/c", "namespace/name"),
    ("PYPI_INDEX_URL", "pypi.org/simple", "http(s) URL"),
    ("PYPISTATS_API_URL", "ftp://example.org/api", "http(s) URL"),
    ("HF_ENDPOINT", "http://user:hub-secret@host:notaport/", "port"),
]


@pytest.mark.parametrize("name, value, expected", BAD)
def test_a_bad_setting_is_one_line_naming_the_variable(name, value, expected):
    with pytest.raises(SettingsError) as error:
        read_settings({name: value})
    message = str(error.value)
    assert message.startswith(name) and expected in message and "\n" not in message
    assert "hub-secret" not in message


@pytest.mark.parametrize(
    "pp_url",
    [
        "http://alice:p#ss/wd?x@proxy.example:notaport",
        "socks5://alice:s3cret@proxy.example:1080",
        "http://alice:s3cret@proxy.example:3128,not a url",
    ],
)
def test_a_bad_proxy_entry_is_named_by_position_and_never_echoed(pp_url):
    with pytest.raises(SettingsError) as error:
        read_settings({"PP_URL": pp_url})
    message = str(error.value)
    assert "PP_URL entry" in message
    for part in ("alice", "s3cret", "p#ss", "wd?x", "proxy.example", "not a url"):
        assert part not in message, message


def test_defaults_and_good_values():
    settings = read_settings({})
    assert settings.egresses == 1 and settings.hf_repo_id is None and settings.max_per_minute == 30
    settings = read_settings(
        {"PP_URL": "http://a:b@127.0.0.2:3128, http://127.0.0.3:3128", "HF_REPO_ID": "me/pypi.downloads", "PYPI_DOWNLOADS_CHUNK_ATTEMPTS": "5"}
    )
    assert settings.egresses == 2 and settings.hf_repo_id == "me/pypi.downloads" and settings.chunk_attempts == 5
