"""Only imgpipe's service modules build clients of AWS, Kafka and MeiliSearch or catch their
libraries' exceptions: every other module (deploy/, stack/, the scripts) goes through them.
Checked on the source, by import statement."""
from __future__ import annotations

import ast

import pytest

from imgpipe.settings import REPO_ROOT

LIBRARIES = ("boto3", "botocore", "obstore", "meilisearch", "confluent_kafka")
# What may import a client library itself: imgpipe's service modules, the tests and their fixtures
# (moto servers), and the benchmark's deliberately naive baseline and raw-producer measurement.
ALLOWED = ("imgpipe/", "tests/", "fixtures/", "bench/seed_design.py", "bench/producing.py")


def project_modules() -> list[str]:
    return sorted(str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*.py")
                  if not any(part.startswith(".") for part in p.relative_to(REPO_ROOT).parts))


def imported_libraries(path: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LIBRARIES)


def test_the_scan_sees_the_service_modules():
    modules = project_modules()
    assert "imgpipe/aws.py" in modules and "deploy/__main__.py" in modules
    assert imported_libraries("imgpipe/aws.py") >= {"boto3", "botocore"}
    assert imported_libraries("imgpipe/meili.py") == {"meilisearch"}


@pytest.mark.parametrize("module", [m for m in project_modules() if not m.startswith(ALLOWED)])
def test_no_module_outside_imgpipe_uses_a_client_library_itself(module):
    assert imported_libraries(module) == set()
