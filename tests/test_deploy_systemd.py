"""deploy/systemd/ through Debian's `systemd-analyze verify` and `security --offline`, in a
throw-away root that has the binaries the units start, plus the rules they must keep:
unprivileged, restarted on failure, data under /var/lib/<name>, loopback only, and each
process gets only the MeiliSearch key it needs (the producer none, nobody the master key)."""
from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from imgpipe.settings import REPO_ROOT

UNITS = REPO_ROOT / "deploy" / "systemd"
SERVICES = {"kafka": "kafka", "meilisearch": "meilisearch", "producer": "imgpipe-producer",
            "consumer": "imgpipe-consumer", "enricher": "imgpipe-enricher"}  # unit imgpipe-<name>.service -> its user
# The main host's services (imgpipe.target); the enricher runs on the fleet's hosts when enabled.
HOST_SERVICES = ["kafka", "meilisearch", "producer", "consumer"]
FLEET_DROP_INS = UNITS / "fleet"
# Debian's systemd; `make test` installs it where it is missing (tools/ensure-debian-packages.sh).
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "systemd-analyze"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (a key may repeat), continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    text = re.sub(r"\\\n\s*", " ", (UNITS / f"imgpipe-{name}.service").read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A root with the system's own units, ours in /etc/systemd/system, and stand-ins for the
    programs ours start (verify checks that each ExecStart binary is there and executable)."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for binary in ("usr/bin/java", "opt/imgpipe/venv/bin/python", "opt/imgpipe/bin/meilisearch"):
        path = root / binary
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    for path in UNITS.iterdir():
        if path.is_file():
            shutil.copy(path, root / "etc/systemd/system" / path.name)
    return root


@pytest.fixture(scope="module")
def fleet_root(root, tmp_path_factory) -> Path:
    """The same root with the fleet's drop-ins installed where setup.sh puts them."""
    fleet = tmp_path_factory.mktemp("fleet-root")
    shutil.copytree(root, fleet, symlinks=True, dirs_exist_ok=True)
    for name in ("kafka", "meilisearch"):
        target = fleet / f"etc/systemd/system/imgpipe-{name}.service.d/vpc.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(FLEET_DROP_INS / f"{name}-vpc.conf", target)
    return fleet


def verify(root: Path, *names: str) -> subprocess.CompletedProcess:
    paths = [str(root / "etc/systemd/system" / n) for n in names]
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", f"--root={root}", *paths],
                          capture_output=True, text=True, timeout=60)


def test_every_unit_passes_systemd_analyze_verify_without_a_warning(root):
    names = sorted(p.name for p in UNITS.iterdir() if p.is_file())
    assert names == ["imgpipe-consumer.service", "imgpipe-enricher.service", "imgpipe-kafka.service",
                     "imgpipe-meilisearch.service", "imgpipe-producer-notifications.service",
                     "imgpipe-producer.service", "imgpipe-reconcile.service", "imgpipe.target"]
    result = verify(root, *names)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_verify_does_report_a_typo_a_bad_value_and_a_missing_binary(root):
    """verify exits 0 on unknown keys, so the test above also demands silence; this shows it speaks."""
    bad = root / "etc/systemd/system/imgpipe-bad.service"
    bad.write_text((UNITS / "imgpipe-consumer.service").read_text()
                   .replace("ProtectSystem=strict", "ProtectSytem=strict")
                   .replace("Restart=on-failure", "Restart=sometimes")
                   .replace("/opt/imgpipe/venv/bin/python", "/opt/imgpipe/venv/bin/pythn"))
    try:
        result = verify(root, bad.name)
    finally:
        bad.unlink()
    output = result.stdout + result.stderr
    assert "ProtectSytem" in output and "sometimes" in output and "pythn" in output


def test_the_services_are_hardened_by_systemds_own_measure(root):
    """systemd-analyze security: 0 is fully locked down, 10 fully exposed; ours score ~1.5 ("OK")."""
    paths = [str(root / "etc/systemd/system" / f"imgpipe-{n}.service") for n in SERVICES]
    # --threshold counts tenths: 20 fails the run when a unit is above 2.0.
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", f"--root={root}", "--threshold=20",
                             "--no-pager", *paths], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    levels = [float(x) for x in re.findall(r"Overall exposure level for imgpipe-\S+: (\d+\.\d+)", result.stdout)]
    assert len(levels) == len(SERVICES) and max(levels) <= 2.0


def test_the_fleets_drop_ins_verify_and_open_kafka_and_meilisearch_to_the_vpc_only(fleet_root):
    result = verify(fleet_root, "imgpipe-kafka.service", "imgpipe-meilisearch.service")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    for name in ("kafka", "meilisearch"):
        text = (FLEET_DROP_INS / f"{name}-vpc.conf").read_text()
        allowed = re.findall(r"^IPAddressAllow=(.*)$", text, re.M)
        assert allowed == ["10.80.0.0/16"], name  # the stack's VPC (deploy/imgpipe.yaml), added to localhost
    assert "10.80.0.0/16" in (REPO_ROOT / "deploy/imgpipe.yaml").read_text()
    meili = (FLEET_DROP_INS / "meilisearch-vpc.conf").read_text()
    assert "ExecStart=\n" in meili and "--http-addr 0.0.0.0:7700" in meili
    # The drop-in changes only the address: the rest of the command line is the unit's.
    base = unit("meilisearch")["Service"]["ExecStart"][0]
    override = re.sub(r"\\\n\s*", " ", meili).split("ExecStart=")[-1].strip().splitlines()[0]
    assert override == base.replace("127.0.0.1:7700", "0.0.0.0:7700")



@pytest.mark.parametrize("name", SERVICES)
def test_each_service_runs_unprivileged_restarts_and_keeps_data_under_var_lib(name):
    service = unit(name)["Service"]
    user = SERVICES[name]
    assert service["User"] == [user] and user != "root" and "DynamicUser" not in service
    assert service["Restart"] == ["on-failure"]
    assert service["StateDirectory"] == [user]
    assert service["ReadWritePaths"] == [f"/var/lib/{user}"]
    assert service["WorkingDirectory"] == [f"/var/lib/{user}"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": ""}.items():
        assert service[key] == [value], (name, key)
    assert unit(name)["Install"]["WantedBy"] == ["imgpipe.target"]


def test_kafka_and_meilisearch_listen_on_loopback_only():
    meili = unit("meilisearch")["Service"]
    assert "--http-addr 127.0.0.1:7700" in meili["ExecStart"][0]
    kafka = unit("kafka")["Service"]
    assert "/etc/imgpipe/kafka/server.properties" in kafka["ExecStart"][0]
    # setup.sh renders the local stack's template; it binds every listener to 127.0.0.1.
    template = (REPO_ROOT / "stack/kafka/server.properties.template").read_text()
    listeners = dict(part.split("://") for part in re.search(r"^listeners=(.*)$", template, re.M).group(1).split(","))
    # The unauthenticated listeners on loopback; the SASL one where set-up puts it (127.0.0.1 without
    # a fleet, the private address with one) and always authenticated with SCRAM-SHA-512.
    assert listeners["PLAINTEXT"].startswith("127.0.0.1:") and listeners["CONTROLLER"].startswith("127.0.0.1:")
    assert listeners["SASL"] == "${sasl_address}:${sasl_port}"
    assert "listener.name.sasl.sasl.enabled.mechanisms=SCRAM-SHA-512" in template
    assert "SASL:${sasl_protocol}" in template
    for placeholder in ("${port}", "${controller_port}", "${data_dir}", "${partitions}", "${sasl_tls}"):
        assert placeholder in template  # what provision.py kafka-config substitutes
    for name in ("kafka", "meilisearch"):
        service = unit(name)["Service"]
        assert service["IPAddressDeny"] == ["any"] and service["IPAddressAllow"] == ["localhost"]


def test_each_process_gets_only_the_meilisearch_key_it_needs():
    env_files = {name: unit(name)["Service"].get("EnvironmentFile", []) for name in SERVICES}
    assert env_files == {
        "kafka": [],
        "meilisearch": ["/etc/imgpipe/meilisearch.env"],  # MEILI_MASTER_KEY: the server itself only
        "producer": ["/etc/imgpipe/pipeline.env"],  # no key at all
        "consumer": ["/etc/imgpipe/pipeline.env", "/etc/imgpipe/consumer.env"],  # its limited key
        "enricher": ["/etc/imgpipe/pipeline.env", "/etc/imgpipe/enricher.env"],  # the same limited key
    }
    for name in SERVICES:
        assert "MEILI" not in " ".join(unit(name)["Service"].get("Environment", []))
    setup = (REPO_ROOT / "deploy/host/setup.sh").read_text()
    # pipeline.env, which every pipeline process reads, is written without any key in it.
    pipeline_envs = re.findall(r"cat > \$ETC/pipeline.env <<EOF\n(.*?)\nEOF", setup, re.S)
    assert len(pipeline_envs) == 2  # the main host's and a fleet host's
    assert all("KEY" not in env and "PASSWORD" not in env and "CLIENT_CONFIG" not in env for env in pipeline_envs)
    assert "--consumer-env $ETC/consumer.env --consumer-owner imgpipe-consumer" in setup


def test_the_producer_reads_the_queue_the_stack_made():
    service = unit("producer")["Service"]
    assert service["ExecStart"] == ["/opt/imgpipe/venv/bin/python /opt/imgpipe/src/producer/image_producer.py "
                                    "--sqs-queue-url ${SQS_QUEUE_URL}"]
    assert "SQS_QUEUE_URL=$SQS_QUEUE_URL" in (REPO_ROOT / "deploy/host/setup.sh").read_text()


def test_the_host_setup_script_and_the_helper_it_installs_are_valid_bash(tmp_path):
    setup = REPO_ROOT / "deploy/host/setup.sh"
    helper = tmp_path / "imgpipe-run"
    helper.write_text(re.search(r"cat > /usr/local/bin/imgpipe-run <<'EOF'\n(.*?)\nEOF\n", setup.read_text(),
                                re.S).group(1))
    for script in (setup, helper):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)


def test_the_target_pulls_in_every_service():
    parser = configparser.ConfigParser()
    parser.read(UNITS / "imgpipe.target")
    assert sorted(parser["Unit"]["Wants"].split()) == sorted(f"imgpipe-{n}.service" for n in HOST_SERVICES)
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_the_package_helper_does_nothing_when_all_is_installed():
    """tools/ensure-debian-packages.sh, which `make test` runs first: a no-op without apt when dpkg has them."""
    result = subprocess.run(["bash", str(REPO_ROOT / "tools/ensure-debian-packages.sh"), "systemd", "cloud-init"],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout + result.stderr == ""


@pytest.mark.parametrize("name, command, env_files", [
    ("producer-notifications", "producer/image_producer.py --notifications-topic", ["/etc/imgpipe/pipeline.env"]),
    ("reconcile", "producer/reconcile.py --every 600", ["/etc/imgpipe/pipeline.env", "/etc/imgpipe/reader.env"]),
])
def test_the_notifications_producer_and_its_reconcile_run_like_the_producer(name, command, env_files):
    """For a host whose S3 server publishes bucket notifications to Kafka: the same user and
    hardening as the SQS producer; reconcile reads the index with the readers' key only."""
    producer, sibling = unit("producer")["Service"], unit(name)["Service"]
    assert sibling["ExecStart"] == [f"/opt/imgpipe/venv/bin/python /opt/imgpipe/src/{command}"]
    assert sibling["EnvironmentFile"] == env_files
    same = {k: v for k, v in producer.items() if k not in ("ExecStart", "EnvironmentFile")}
    assert {k: sibling.get(k) for k in same} == same
    assert unit(name)["Install"]["WantedBy"] == ["imgpipe.target"]
