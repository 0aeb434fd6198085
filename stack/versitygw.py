"""versitygw, the local stack's S3 server: built once from its pinned Go module into the state folder.

`go install github.com/versity/versitygw/cmd/versitygw@v1.8.0` checks the module against the Go
checksum database and builds a static binary (CGO off, -trimpath, version ldflags), with the
module and build caches under the state folder too; they are deleted after a good build (they
hold ~760 MB). A stamp next to the binary records what was built, so later runs are free.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

VERSION = "v1.8.0"
MODULE = "github.com/versity/versitygw/cmd/versitygw"
MIN_GO = (1, 25)  # versitygw v1.8.0's go.mod says go 1.25.0
LDFLAGS = f"-s -w -X=main.Version={VERSION} -X=main.Build={VERSION} -X=main.BuildTime=none"
PROGRESS_EVERY_SECONDS = 15.0
# Which bucket notifications versitygw publishes (`--event-filter`; docker-compose.yml mounts the
# same file): object changes only, not tagging or ACL changes.
EVENT_FILTER = Path(__file__).resolve().parent / "versitygw-event-filter.json"


class BuildError(Exception):
    """Go is missing or too old, or the build failed; the message says which and where the log is."""


def stamp_text() -> str:
    return f"{MODULE}@{VERSION} {LDFLAGS}\n"


def go_version(go: str) -> tuple[int, int] | None:
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    match = re.match(r"go(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else None


def install(state: Path, build_log: Path) -> Path:
    """The pinned versitygw binary in `state`/bin, built on first use; returns its path."""
    binary = state / "bin" / "versitygw"
    stamp = state / "bin" / ".versitygw-stamp"
    if binary.is_file() and stamp.is_file() and stamp.read_text() == stamp_text():
        return binary
    go = shutil.which("go")
    if not go:
        raise BuildError(f"the local S3 server (versitygw {VERSION}) is built from source and needs Go "
                         f"{MIN_GO[0]}.{MIN_GO[1]} or newer on PATH (https://go.dev/dl/), or set VERSITYGW_BINARY")
    found = go_version(go)
    if found is None or found < MIN_GO:
        raise BuildError(f"versitygw {VERSION} needs Go {MIN_GO[0]}.{MIN_GO[1]} or newer; {go} is "
                         f"{'.'.join(map(str, found)) if found else 'of unknown version'}")
    gopath = state / "go"
    env = {**os.environ, "GOBIN": str(binary.parent), "GOMODCACHE": str(gopath / "mod"),
           "GOCACHE": str(gopath / "cache"), "GOPATH": str(gopath), "GOTOOLCHAIN": "local",
           "CGO_ENABLED": "0", "GOFLAGS": "-modcacherw"}  # writable caches: rm -rf .local works
    binary.parent.mkdir(parents=True, exist_ok=True)
    build_log.parent.mkdir(parents=True, exist_ok=True)
    log.info("building versitygw %s with %s (first run only, about 2 minutes on 2 cores; log: %s)",
             VERSION, subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip(), build_log)
    cmd = [go, "install", "-v", "-trimpath", f"-ldflags={LDFLAGS}", f"{MODULE}@{VERSION}"]
    started = last_report = time.monotonic()
    packages = 0
    with open(build_log, "w", encoding="utf-8") as out:
        out.write(" ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            packages += 1
            if time.monotonic() - last_report >= PROGRESS_EVERY_SECONDS:
                last_report = time.monotonic()
                log.info("building versitygw: %d packages after %.0f s", packages, last_report - started)
        code = proc.wait()
    if code != 0 or not binary.is_file():
        tail = "\n".join(build_log.read_text(errors="replace").strip().splitlines()[-15:])
        raise BuildError(f"building versitygw {VERSION} failed (exit {code}); full log: {build_log}\n{tail}")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    if VERSION not in version:
        raise BuildError(f"{binary} does not report version {VERSION}: {version.strip()!r}")
    stamp.write_text(stamp_text())
    log.info("built versitygw %s in %.0f s", VERSION, time.monotonic() - started)
    # The caches only serve a rebuild of the same version; a new pin downloads what it needs.
    shutil.rmtree(gopath, ignore_errors=True)
    return binary


def supports_user_xattrs(directory: Path) -> bool:
    """versitygw's posix backend keeps metadata (ETag, content type) in user xattrs and refuses
    to start on a filesystem without them; such a filesystem gets a sidecar folder instead."""
    probe = "user.imgpipe-probe"
    try:
        os.setxattr(directory, probe, b"1")
        os.removexattr(directory, probe)
        return True
    except OSError:
        return False


def notification_flags(kafka_url: str, topic: str) -> list[str]:
    """versitygw's options to publish bucket notifications to `topic`. It writes a test event
    when it starts and exits if Kafka does not take it (within 10 s): start it with these only
    when the broker answers and the topic exists. Later it sends each notification once, from
    a goroutine, and only logs a failure."""
    return ["--event-kafka-url", kafka_url, "--event-kafka-topic", topic, "--event-filter", str(EVENT_FILTER)]
