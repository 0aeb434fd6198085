"""Who may do what in MeiliSearch: one API key per role, limited to its indexes and to the actions
that role uses, and the set-up that creates the index and those keys once, with the master key.

The one implementation behind every deployment path:
- the local stack (`make up`, stack/lifecycle.py) keeps the keys in `.env`;
- docker compose's one-shot `meili-setup` service and the AWS host's set-up (cloud-init runs
  deploy/host/setup.sh) both run deploy/host/provision.py, which writes each key into its own
  env file for the one process that needs it.
No process holds the master key at run time: the consumer indexes with the consumer's key, the
readers (visualize/, search, export_csv.py, reconcile) use the readers' key, the producer none.

Keys are found again by name, so set-up can run any number of times; a key of that name with
other rights (an older set-up) is replaced.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from imgpipe import meili
from imgpipe.document import EMBEDDER_SETTINGS, INDEX_SETTINGS
from imgpipe.errors import FAILED, InfrastructureError, UserError
from imgpipe.settings import Settings

log = logging.getLogger(__name__)

# consumer/indexer.py: looks the index up (indexes.get), re-applies INDEX_SETTINGS and the
# descriptor's embedder at start (settings.get/update; set-up applies them first, so the index
# exists and the consumer never needs indexes.create), adds and deletes documents, waits for tasks.
CONSUMER_ACTIONS = ("documents.add", "documents.delete", "tasks.get", "indexes.get", "settings.get",
                    "settings.update")
# visualize/, search.py, export_csv.py and producer/reconcile.py: search, and read documents (the
# documents API pages through a whole index; search alone stops at 1,000 hits).
READER_ACTIONS = ("search", "documents.get")
ROLES = {"consumer": CONSUMER_ACTIONS, "reader": READER_ACTIONS}
# The setting each role's key is read from.
ROLE_SETTING = {"consumer": "MEILI_ADMIN_KEY", "reader": "MEILI_SEARCH_KEY"}
DESCRIPTION = "created by imgpipe's set-up (imgpipe/access.py)"


@dataclass(frozen=True)
class Keys:
    consumer: str
    reader: str

    def env(self) -> dict[str, dict[str, str]]:
        """Each role's env file: {role: {setting: key}}."""
        return {role: {ROLE_SETTING[role]: getattr(self, role)} for role in ROLES}


def key_name(role: str, indexes: list[str]) -> str:
    return f"imgpipe {role} of {', '.join(indexes)}"


def wait_until_up(settings: Settings, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not meili.answers(settings):
        if time.monotonic() > deadline:
            raise InfrastructureError("meilisearch", f"{settings.meili_url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def prepare_index(settings: Settings, master_key: str, index: str, embedder: bool = True) -> None:
    """Create the index (primary key `id`) unless it exists, and apply INDEX_SETTINGS and (unless
    `embedder` is False) the descriptor's embedder, as the consumer does at its start."""
    admin = settings
    client = meili.client(settings, key=master_key)
    try:
        with meili.errors("looking up", admin, index):
            primary_key = client.get_index(index).primary_key
    except meili.MeiliError as exc:
        if exc.code != "index_not_found":
            raise
        with meili.errors("creating", admin, index):
            task = client.create_index(index, {"primaryKey": "id"})
        meili.wait_for_task(client, admin, task.task_uid, "creating the index", index)
        primary_key = "id"
    if primary_key not in (None, "id"):
        raise UserError(f"MeiliSearch index {index!r} has primary key {primary_key!r}, but the pipeline's "
                        "documents are keyed by 'id': choose another MEILI_INDEX or delete that index")
    with meili.errors("applying the settings of", admin, index):
        task = client.index(index).update_settings(INDEX_SETTINGS)
    meili.wait_for_task(client, admin, task.task_uid, "applying the index settings", index)
    if not embedder:
        return
    try:
        with meili.errors("adding the descriptor's embedder to", admin, index):
            task = client.index(index).update_settings(EMBEDDER_SETTINGS)
        meili.wait_for_task(client, admin, task.task_uid, "adding the descriptor's embedder", index)
    except meili.MeiliError as exc:
        if exc.kind != FAILED:
            raise
        # Refused on an index holding documents without descriptors: the consumer adds it later.
        log.warning("index %s keeps no descriptors yet (%s); the consumer adds the embedder later", index, exc.code)


def ensure_key(settings: Settings, master_key: str, role: str, indexes: list[str]) -> str:
    """The key of `role` on these indexes (index names, or patterns ending in `*`), created once."""
    admin = settings
    client = meili.client(settings, key=master_key)
    name, actions = key_name(role, indexes), sorted(ROLES[role])
    with meili.errors("listing the API keys", admin):
        existing = [k for k in client.get_keys({"limit": 1000}).results if k.name == name]
    for key in existing:
        if sorted(key.actions) == actions and list(key.indexes) == list(indexes) and key.expires_at is None:
            return key.key
    for key in existing:  # an older set-up gave it other rights: replace it
        with meili.errors(f"deleting the API key {name!r}", admin):
            client.delete_key(key.uid)
    with meili.errors(f"creating the API key {name!r}", admin):
        return client.create_key({"name": name, "description": DESCRIPTION, "actions": actions,
                                  "indexes": list(indexes), "expiresAt": None}).key


def set_up(settings: Settings, master_key: str, indexes: list[str] | None = None,
           timeout: float = 120.0) -> Keys:
    """Prepare MEILI_INDEX and return the consumer's and the readers' keys, both limited to
    `indexes` (default: MEILI_INDEX alone)."""
    if not master_key:
        raise UserError("MEILI_MASTER_KEY is not set: only the set-up uses it, to create the index and the keys")
    wait_until_up(settings, timeout)
    indexes = list(indexes or [settings.meili_index])
    prepare_index(settings, master_key, settings.meili_index)
    return Keys(consumer=ensure_key(settings, master_key, "consumer", indexes),
                reader=ensure_key(settings, master_key, "reader", indexes))
