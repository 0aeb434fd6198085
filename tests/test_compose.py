"""docker-compose.yml and the Dockerfile, checked as files (no Docker engine here), plus the
rule that secrets live only in the git-ignored .env."""
from __future__ import annotations

import re
import subprocess
from urllib.parse import urlparse

import pytest
import yaml

from imgpipe.settings import REPO_ROOT

INFRA = ("kafka", "meilisearch", "s3")
PIPELINE = ("init", "producer", "consumer")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def published(port) -> tuple[str, int, int]:
    """(host ip, host port, container port) of a short- or long-form port entry."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), int(port["published"]), int(port["target"])
    parts = str(port).split(":")
    if len(parts) != 3:
        return "", int(parts[0]), int(parts[-1])
    return parts[0], int(parts[1]), int(parts[2])


def env_of(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def test_the_services_are_all_there(services):
    assert set(INFRA + PIPELINE) <= set(services)


def test_every_image_is_pinned_to_a_tag(services):
    for name, service in services.items():
        image = service.get("image")
        assert image or "build" in service, name
        if image:
            _, _, tag = image.rpartition("/")[2].partition(":")
            assert tag and tag != "latest", f"{name}: {image} is not pinned"
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["meilisearch"]["image"].startswith("getmeili/meilisearch:v1.21")
    assert services["s3"]["image"] == "versity/versitygw:v1.8.0"


def test_every_published_port_is_bound_to_loopback(services):
    ports = [(name, published(p)) for name, s in services.items() for p in s.get("ports", [])]
    assert ports
    assert [(name, port) for name, port in ports if port[0] != "127.0.0.1"] == []


def test_host_programs_reach_the_published_ports_with_the_default_settings(services):
    from dotenv import dotenv_values

    example = dotenv_values(REPO_ROOT / ".env.example")
    host_ports = {name: {published(p)[1] for p in s.get("ports", [])} for name, s in services.items()}
    assert int(example["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1]) in host_ports["kafka"]
    assert urlparse(example["MEILI_URL"]).port in host_ports["meilisearch"]
    assert urlparse(example["S3_ENDPOINT_URL"]).port in host_ports["s3"]


def test_kafka_advertises_one_listener_in_the_network_and_one_on_the_host(services):
    env = env_of(services["kafka"])
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert "127.0.0.1:9092" in advertised.values()
    internal = [addr for addr in advertised.values() if addr.startswith("kafka:")]
    assert internal
    listener_names = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert set(advertised) <= listener_names and env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    assert env["KAFKA_PROCESS_ROLES"].replace(" ", "") in ("broker,controller", "controller,broker")
    for name in PIPELINE:
        assert env_of(services[name])["KAFKA_BOOTSTRAP_SERVERS"] in internal, name


def test_meilisearch_takes_its_master_key_from_the_environment_with_no_default(services):
    env = env_of(services["meilisearch"])
    # ${VAR} or ${VAR:?message}/${VAR?message}; never ${VAR:-default} or ${VAR-default}.
    assert re.fullmatch(r"\$\{MEILI_MASTER_KEY(:?\?[^}]*)?\}", str(env["MEILI_MASTER_KEY"]))
    assert env["MEILI_ENV"] == "production" and str(env["MEILI_NO_ANALYTICS"]).lower() == "true"
    for name, service in services.items():
        for var, value in env_of(service).items():
            if var.startswith("MEILI_") and var.endswith("_KEY") and value:
                assert str(value).startswith("${"), f"{name} sets {var} to a literal"


def test_the_s3_server_keeps_its_data_in_the_volume_and_takes_its_keys_from_env(services):
    s3 = services["s3"]
    command = s3["command"]
    assert command[-2:] == ["posix", "/data"]
    assert command[command.index("--health") + 1] == "/health"
    port = command[command.index("--port") + 1]
    assert {published(p)[2] for p in s3["ports"]} == {int(port.rsplit(":", 1)[1])}
    assert "/health" in " ".join(s3["healthcheck"]["test"]) and str(port.rsplit(":", 1)[1]) in " ".join(
        s3["healthcheck"]["test"])
    env = env_of(s3)
    # Keys come from .env with no default, and never through the command line.
    assert re.fullmatch(r"\$\{AWS_ACCESS_KEY_ID:?\?[^}]*\}", str(env["ROOT_ACCESS_KEY"]))
    assert re.fullmatch(r"\$\{AWS_SECRET_ACCESS_KEY:?\?[^}]*\}", str(env["ROOT_SECRET_KEY"]))
    assert not any(flag in command for flag in ("--access", "-a", "--secret", "-s"))
    pipeline_url = urlparse(env_of(services["init"])["S3_ENDPOINT_URL"])
    assert (pipeline_url.hostname, pipeline_url.port) == ("s3", int(port.rsplit(":", 1)[1]))


def test_infrastructure_has_healthchecks_that_the_pipeline_waits_for(services):
    for name in INFRA:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test not in (["NONE"], "NONE"), name
    for name, needs in {"init": ("kafka", "s3"), "consumer": ("kafka", "s3", "meilisearch"),
                        "producer": ("kafka", "s3")}.items():
        depends = services[name]["depends_on"]
        assert all(depends[n]["condition"] == "service_healthy" for n in needs), name
    for name in ("producer", "consumer"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_data_lives_in_named_volumes(compose, services):
    for name, path in (("kafka", "/var/lib/kafka/data"), ("meilisearch", "/meili_data"), ("s3", "/data")):
        mounts = [str(v).split(":") for v in services[name]["volumes"]]
        assert any(target == path and source in compose["volumes"] for source, target, *_ in mounts), name


def test_pipeline_services_are_built_here_and_read_settings_from_env_file(services):
    for name in PIPELINE:
        service = services[name]
        assert service.get("build") in (".", {"context": "."}), name
        env_file = service.get("env_file")
        assert env_file == ".env" or ".env" in (env_file or []), name
        assert service.get("user") in (None, "app", "10001"), name
    assert services["consumer"]["restart"] in ("unless-stopped", "always", "on-failure")
    assert services["init"].get("restart", "no") == "no"


def test_dockerfile_runs_as_a_non_root_user():
    lines = [line.strip() for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    users = [line.split(None, 1)[1].split(":")[0] for line in lines if line.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    text = "\n".join(lines)
    assert "pip install -r requirements.txt" in text and "PYTHONPATH=/app" in text


def test_docker_build_context_leaves_out_env_and_local_state():
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv/", ".local/", ".git/"} <= ignored


def test_env_is_git_ignored():
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT).returncode == 0


def files_holding_env_secrets() -> tuple[int, list[str]]:
    """(how many secrets .env holds, files git tracks or would add that contain one of them).

    A helper, so that the secrets stay out of the test's own frame: pytest --showlocals
    prints a failing test's locals."""
    from dotenv import dotenv_values

    values = dotenv_values(REPO_ROOT / ".env")
    secrets = [values.get(name) or "" for name in ("MEILI_MASTER_KEY", "MEILI_ADMIN_KEY", "MEILI_SEARCH_KEY",
                                                   "AWS_SECRET_ACCESS_KEY")]
    secrets = [s.encode() for s in secrets if len(s) >= 16]
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout.split(b"\0")
    offenders = []
    for name in filter(None, listed):
        path = REPO_ROOT / name.decode()
        if path.is_file() and path.stat().st_size < 50_000_000:
            content = path.read_bytes()
            if any(secret in content for secret in secrets):
                offenders.append(name.decode())
    return len(secrets), offenders


def test_no_file_git_tracks_or_would_add_holds_a_secret_from_env():
    from stack.lifecycle import ensure_env_file

    ensure_env_file()  # a fresh clone gets its .env (and master key) the way `make up` makes it
    secrets, offenders = files_holding_env_secrets()
    assert secrets >= 1, "the local .env should hold a MeiliSearch master key"
    assert offenders == []  # file names only: a secret must never reach the test output


def test_the_s3_server_notifies_the_topic_created_before_it_starts(services):
    s3 = services["s3"]
    env = env_of(s3)
    assert env["VGW_EVENT_KAFKA_URL"] == env_of(services["init"])["KAFKA_BOOTSTRAP_SERVERS"]
    assert env["VGW_EVENT_KAFKA_TOPIC"].startswith("${S3_NOTIFICATIONS_TOPIC")
    mounts = {target: source for source, target, *_ in (str(v).split(":") for v in s3["volumes"])}
    assert (REPO_ROOT / mounts[env["VGW_EVENT_FILTER"]]).is_file()
    # versitygw exits when its test event finds no topic: `topics` makes it first.
    assert s3["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert "ensure_notifications_topic" in " ".join(services["topics"]["command"])
    assert "--notifications-topic" in services["producer"]["command"]
