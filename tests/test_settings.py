"""Settings: every problem named at once, secrets never shown."""
from __future__ import annotations

import pytest

from imgpipe.settings import ENV_VARS, Settings, SettingsError, settings_from_mapping, to_env


def test_defaults_are_the_local_stack():
    settings = settings_from_mapping({})
    assert settings.kafka_topic == "image-events"
    assert settings.meili_index == "image_metadata"
    assert settings.allowed_buckets == ("images",)


def test_every_problem_is_listed_in_one_error():
    with pytest.raises(SettingsError) as err:
        settings_from_mapping({"CONSUMER_BATCH_SIZE": "lots", "THUMBNAIL_SIZE": "0", "MEILI_URL": "ftp://x",
                               "S3_FAST_PATH": "maybe", "MEILI_MASTER_KEY": "short", "KAFKA_TOPIC": ""})
    text = str(err.value)
    for name in ("CONSUMER_BATCH_SIZE", "THUMBNAIL_SIZE", "MEILI_URL", "S3_FAST_PATH", "MEILI_MASTER_KEY",
                 "KAFKA_TOPIC"):
        assert name in text
    assert "short" not in text  # the key's value is never echoed


def test_secrets_are_hidden_from_repr():
    settings = settings_from_mapping({"MEILI_MASTER_KEY": "m" * 32, "MEILI_SEARCH_KEY": "s" * 32,
                                      "KAFKA_CLIENT_CONFIG": '{"sasl.password": "hunter2hunter2"}'})
    shown = repr(settings)
    assert "m" * 32 not in shown and "s" * 32 not in shown and "hunter2" not in shown


def test_bad_client_config_does_not_echo_its_value():
    with pytest.raises(SettingsError) as err:
        settings_from_mapping({"KAFKA_CLIENT_CONFIG": "sasl.password=hunter2"})
    assert "hunter2" not in str(err.value)


def test_to_env_round_trips():
    original = settings_from_mapping({"S3_ALLOWED_BUCKETS": "a,b", "S3_FAST_PATH": "off",
                                      "KAFKA_CLIENT_CONFIG": '{"security.protocol": "SSL"}',
                                      "MEILI_MASTER_KEY": "k" * 20})
    env = to_env(original)
    assert set(env) == set(ENV_VARS)
    assert settings_from_mapping(env) == original


def test_prefixes_get_a_trailing_slash_and_must_differ():
    assert settings_from_mapping({"S3_RAW_PREFIX": "incoming"}).s3_raw_prefix == "incoming/"
    with pytest.raises(SettingsError, match="S3_PROCESSED_PREFIX"):
        settings_from_mapping({"S3_RAW_PREFIX": "x/", "S3_PROCESSED_PREFIX": "x/"})


@pytest.mark.parametrize("env, named", [
    ({"S3_RAW_PREFIX": "images/", "S3_PROCESSED_PREFIX": "images/processed/"}, "S3_PROCESSED_PREFIX"),
    ({"S3_RAW_PREFIX": "images/new/", "S3_PROCESSED_PREFIX": "images/"}, "S3_PROCESSED_PREFIX"),
    ({"S3_RAW_PREFIX": "raw/", "S3_EXPORT_PREFIX": "raw/exports/"}, "S3_EXPORT_PREFIX"),
    ({"S3_PROCESSED_PREFIX": "out/", "S3_EXPORT_PREFIX": "out/csv/"}, "S3_EXPORT_PREFIX"),
    ({"S3_RAW_PREFIX": ""}, "empty: the whole bucket"),
])
def test_prefixes_that_contain_one_another_are_refused(env, named):
    """The producer announces everything under the raw prefix: derived images or an export
    inside it would be processed again, forever."""
    with pytest.raises(SettingsError, match="must not contain one another") as err:
        settings_from_mapping(env)
    assert named in str(err.value)
    assert settings_from_mapping({"S3_RAW_PREFIX": "raw/", "S3_PROCESSED_PREFIX": "raw-processed/"})


def test_reading_prefers_the_search_key_and_indexing_the_admin_key():
    s = Settings(meili_master_key="m" * 16, meili_admin_key="a" * 16, meili_search_key="s" * 16)
    assert s.indexing_key == "a" * 16 and s.reading_key == "s" * 16
