"""Java programs the pipeline runs (Kafka in the local stack, Hadoop Streaming for MapReduce): finding
Java, and fetching a pom's jars from Maven Central once into a git-ignored folder."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


class JvmError(Exception):
    """Java or Maven is missing, or Maven could not fetch the jars; the message says which."""


def java_binary(needed_by: str) -> str:
    """JAVA_HOME's java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise JvmError(f"{needed_by} needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)")
    return java


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_maven_jars(pom: Path, libs: Path, what: str) -> Path:
    """Copy the runtime jars `pom` depends on into `libs`, once: a stamp holding the pom's
    sha256 makes later calls free, and a changed pom fetches again. Returns `libs`."""
    stamp = libs / ".pom-sha256"
    if stamp.is_file() and stamp.read_text() == sha256_file(pom):
        return libs
    if not shutil.which("mvn"):
        raise JvmError(f"{what} needs Maven (mvn) to fetch its jars from Maven Central; "
                       "install it (Debian: apt-get install maven)")
    log.info("fetching %s jars from Maven Central (first run only)", what)
    shutil.rmtree(libs, ignore_errors=True)
    cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-15:])
        raise JvmError(f"fetching the {what} jars failed (exit {result.returncode}): mvn -f {pom} ...\n{tail}")
    stamp.write_text(sha256_file(pom))
    return libs
