"""Every MeiliSearch we start (the local stack, docker compose, the AWS host's unit) bounds its
indexing memory the same way: the default (two thirds of RAM) costs ~0.3 s of kernel CPU per
indexing task (stack/services.py has the measurement)."""
from __future__ import annotations

import yaml

from imgpipe.settings import REPO_ROOT
from imgpipe.settings import load_settings
from stack.services import MEILI_MAX_INDEXING_MEMORY, MeiliSearch


def test_the_local_stack_passes_the_bound():
    command = MeiliSearch(load_settings()).command()
    assert command[command.index("--max-indexing-memory") + 1] == MEILI_MAX_INDEXING_MEMORY == "1GiB"


def test_compose_and_the_unit_pass_the_same_bound():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert compose["services"]["meilisearch"]["environment"]["MEILI_MAX_INDEXING_MEMORY"] == MEILI_MAX_INDEXING_MEMORY
    unit = (REPO_ROOT / "deploy/systemd/imgpipe-meilisearch.service").read_text(encoding="utf-8")
    assert f"--max-indexing-memory {MEILI_MAX_INDEXING_MEMORY}" in unit
