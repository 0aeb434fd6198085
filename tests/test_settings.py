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


def test_overrides_are_checked_as_the_environment_is():
    """One check for both: a script's option cannot slip past a rule its variable obeys."""
    base = settings_from_mapping({})
    with pytest.raises(SettingsError) as err:
        base.with_overrides(metrics_port=70000, consumer_batch_size=0, consumer_workers=-1, meili_url="ftp://x",
                            kafka_dead_letter_topic=base.kafka_topic, s3_processed_prefix=base.s3_raw_prefix,
                            processing_timeout_seconds=float("inf"), meili_index="")
    text = str(err.value)
    for expected in ("METRICS_PORT must be a TCP port (1-65535) or 0, got 70000",
                     "CONSUMER_BATCH_SIZE must be at least 1, got 0", "CONSUMER_WORKERS must be 0 or more, got -1",
                     "MEILI_URL must be an http(s) URL", "KAFKA_DEAD_LETTER_TOPIC must differ from KAFKA_TOPIC",
                     "must not contain one another", "PROCESSING_TIMEOUT_SECONDS must be a positive number",
                     "MEILI_INDEX must not be empty"):
        assert expected in text
    assert base.with_overrides(metrics_port=9464, consumer_workers=0).metrics_port == 9464


def test_overrides_of_the_wrong_type_are_refused():
    with pytest.raises(SettingsError, match="CONSUMER_BATCH_SIZE must be a whole number, got '200'"):
        Settings().with_overrides(consumer_batch_size="200")
    with pytest.raises(SettingsError, match="S3_FAST_PATH must be on or off"):
        Settings().with_overrides(s3_fast_path="off")


def test_a_short_master_key_is_refused_without_being_shown():
    with pytest.raises(SettingsError, match="MEILI_MASTER_KEY must be at least 16 bytes") as err:
        Settings().with_overrides(meili_master_key="hunter2")
    assert "hunter2" not in str(err.value)


def test_options_are_named_with_the_variable_behind_them():
    import argparse

    options = {"metrics_port": "metrics_port", "batch_size": "consumer_batch_size", "topic": "kafka_topic"}
    args = argparse.Namespace(metrics_port=70000, batch_size=0, topic=None)
    with pytest.raises(SettingsError) as err:
        Settings().with_options(args, options)
    text = str(err.value)
    assert "--metrics-port (env METRICS_PORT) must be a TCP port (1-65535) or 0, got 70000" in text
    assert "--batch-size (env CONSUMER_BATCH_SIZE) must be at least 1, got 0" in text
    assert "KAFKA_TOPIC" not in text  # an option not given changes nothing
    given = Settings().with_options(argparse.Namespace(metrics_port=9464, batch_size=None, topic="t"), options)
    assert (given.metrics_port, given.consumer_batch_size, given.kafka_topic) == (9464, 200, "t")


def test_an_unparsable_value_is_reported_once():
    with pytest.raises(SettingsError) as err:
        settings_from_mapping({"CONSUMER_BATCH_SIZE": "lots", "METRICS_PORT": "99999"})
    text = str(err.value)
    assert text.count("CONSUMER_BATCH_SIZE") == 1 and "must be a whole number, got 'lots'" in text
    assert "METRICS_PORT must be a TCP port (1-65535) or 0, got 99999" in text


@pytest.mark.parametrize("script", ["producer/image_producer.py", "consumer/image_consumer.py"])
def test_scripts_refuse_a_bad_option_through_the_settings_check(script):
    import subprocess
    import sys

    from imgpipe.settings import REPO_ROOT

    result = subprocess.run([sys.executable, script, "--metrics-port", "70000"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--metrics-port (env METRICS_PORT) must be a TCP port (1-65535) or 0, got 70000" in result.stderr
    assert "Traceback" not in result.stderr
