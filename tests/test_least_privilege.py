"""Which MeiliSearch key each process of each deployment gets, read from the files that decide it:
docker-compose.yml (env_file, environment, the key files a command sources from a volume) and
the systemd units (EnvironmentFile=, Environment=) with the files deploy/host/setup.sh and
provision.py write. Only MeiliSearch itself and the one-shot set-ups hold the master key; the
consumer holds the consumer's key, the readers the readers' key, the producer none.
(The keys' rights are checked against the real MeiliSearch in test_deploy_provision.py and
test_security.py.)"""
from __future__ import annotations

import configparser
import re
import shlex

import pytest
import yaml

from imgpipe import access
from imgpipe.settings import REPO_ROOT

MASTER, CONSUMER, READER = "master", "consumer", "reader"
# What .env may hold (the local stack's keys among them), as compose's env_file hands it over.
DOTENV = {"MEILI_MASTER_KEY": "dotenv-master", "MEILI_ADMIN_KEY": "dotenv-local-admin",
          "MEILI_SEARCH_KEY": "dotenv-local-search"}
NAMES = {"dotenv-master": MASTER, "dotenv-local-admin": "the local stack's consumer key",
         "dotenv-local-search": "the local stack's reader key", "role-consumer": CONSUMER,
         "role-reader": READER}


def role_file(role: str) -> dict[str, str]:
    """What provision.py writes into a role's env file."""
    return {access.ROLE_SETTING[role]: f"role-{role}"}


def held(env: dict[str, str]) -> set[str]:
    """The MeiliSearch keys in an environment, by who they belong to."""
    return {NAMES[v] for k, v in env.items() if k.startswith("MEILI_") and k.endswith("_KEY") and v in NAMES}


# --- docker compose -----------------------------------------------------------------------------
COMPOSE_EXPECTED = {"kafka": set(), "meilisearch": {MASTER}, "s3": set(), "topics": set(), "init": set(),
                    "meili-setup": {MASTER}, "producer": set(), "reconcile": {READER}, "consumer": {CONSUMER},
                    "enricher": {CONSUMER},
                    "corpus": set(), "reader": {READER}}
# The services that mount each role's key volume: reconcile only lists documents, as readers do.
KEY_VOLUME_USERS = {"consumer": {"consumer", "enricher"}, "reader": {"reader", "reconcile"}}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def interpolate(value) -> str:
    """Compose's ${VAR}, ${VAR:?msg}, ${VAR:-default} from .env (the variables that matter here)."""
    def one(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        got = DOTENV.get(name, "")
        return got if got or "-" not in op else rest
    return re.sub(r"\$\{(\w+)(:?[-?])?([^}]*)\}", one, str(value if value is not None else ""))


def mounts(service: dict) -> dict[str, str]:
    """{path in the container: volume}."""
    return {target: source for source, target, *_ in (str(v).split(":") for v in service.get("volumes", []))}


def volume_roles(compose: dict) -> dict[str, str]:
    """Which role's key file meili-setup writes into which volume."""
    setup = compose["services"]["meili-setup"]
    command = setup["command"]
    roles = {}
    for role in access.ROLES:
        path = command[command.index(f"--{role}-env") + 1]
        folder, _, _ = path.rpartition("/")
        roles[(mounts(setup)[folder], path.rpartition("/")[2])] = role
    return roles


def sourced_files(service: dict) -> list[str]:
    words = []
    for part in ("entrypoint", "command"):
        value = service.get(part) or []
        words += value if isinstance(value, list) else shlex.split(value)
    return re.findall(r"(?:^|&&|;)\s*\.\s+(\S+)", " ".join(words))


def compose_env(compose: dict, name: str) -> dict[str, str]:
    service = compose["services"][name]
    env_files = service.get("env_file") or []
    env = dict(DOTENV) if ".env" in ([env_files] if isinstance(env_files, str) else env_files) else {}
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({k: interpolate(v) for k, v in environment.items()})
    roles = volume_roles(compose)
    for path in sourced_files(service):
        folder, _, file_name = path.rpartition("/")
        volume = mounts(service).get(folder)
        assert volume, f"{name} sources {path}, which no volume of it holds"
        env.update(role_file(roles[(volume, file_name)]))
    return env


def test_every_compose_service_gets_only_its_key(compose):
    assert set(compose["services"]) == set(COMPOSE_EXPECTED)
    got = {name: held(compose_env(compose, name)) for name in compose["services"]}
    assert got == COMPOSE_EXPECTED


def test_in_compose_only_the_server_and_the_one_shot_set_up_hold_the_master_key(compose):
    services = compose["services"]
    for name in services:
        if MASTER in held(compose_env(compose, name)):
            assert name == "meilisearch" or services[name].get("restart") == "no", name
    setup = services["meili-setup"]
    assert setup["command"][:3] == ["python", "deploy/host/provision.py", "meili"]
    assert services["consumer"]["depends_on"]["meili-setup"]["condition"] == "service_completed_successfully"
    # Each key volume is mounted read-only by the services of its role, and by no other.
    for (volume, _), role in volume_roles(compose).items():
        users = [(n, m) for n, s in services.items() if n != "meili-setup"
                 for m in s.get("volumes", []) if str(m).startswith(f"{volume}:")]
        assert {n for n, _ in users} == KEY_VOLUME_USERS[role] and all(m.endswith(":ro") for _, m in users), (role, users)


# --- systemd, on the AWS host ------------------------------------------------------------------
UNITS_EXPECTED = {"imgpipe-kafka": set(), "imgpipe-meilisearch": {MASTER}, "imgpipe-producer": set(),
                  "imgpipe-producer-notifications": set(), "imgpipe-reconcile": {READER},
                  "imgpipe-consumer": {CONSUMER}, "imgpipe-enricher": {CONSUMER}}


def setup_script() -> str:
    return (REPO_ROOT / "deploy/host/setup.sh").read_text()


def host_env_files() -> dict[str, dict[str, str]]:
    """What each /etc/imgpipe/*.env holds, as setup.sh and provision.py write it."""
    script = setup_script()
    files = {"/etc/imgpipe/meilisearch.env": {"MEILI_MASTER_KEY": "dotenv-master"}}
    pipeline = re.search(r"cat > \$ETC/pipeline\.env <<EOF\n(.*?)\nEOF", script, re.S).group(1)
    files["/etc/imgpipe/pipeline.env"] = dict(line.split("=", 1) for line in pipeline.splitlines())
    assert "MEILI_MASTER_KEY=$(openssl rand" in script and "$ETC/meilisearch.env" in script
    provision = re.search(r"provision\.py\" meili(.*?)\n\s*\)", script, re.S).group(1)
    for role in access.ROLES:
        path = re.search(rf"--{role}-env (\S+)", provision).group(1).replace("$ETC", "/etc/imgpipe")
        files[path] = role_file(role)
    # A fleet host's enricher gets what provision.py fleet-join writes: the consumer's key.
    join = re.search(r"provision\.py\" fleet-join(.*?)\)", script, re.S).group(1)
    assert "--consumer-env $ETC/consumer.env" in join
    enricher = re.search(r"--enricher-env (\S+)", script).group(1).replace("$ETC", "/etc/imgpipe")
    files[enricher] = role_file("consumer")
    return files


def unit_env(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    # Repeated keys (EnvironmentFile= twice) are kept, one per line.
    text = (REPO_ROOT / f"deploy/systemd/{name}.service").read_text()
    env: dict[str, str] = {}
    files = host_env_files()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "EnvironmentFile":
            path = value.lstrip("-")
            assert path in files, f"{name} reads {path}, which the set-up does not write"
            env.update(files[path])
        elif key == "Environment":
            env.update(item.split("=", 1) for item in shlex.split(value))
    return env


def test_every_unit_gets_only_its_key():
    units = {p.stem for p in (REPO_ROOT / "deploy/systemd").glob("*.service")}
    assert units == set(UNITS_EXPECTED)
    assert {name: held(unit_env(name)) for name in units} == UNITS_EXPECTED


def test_the_host_env_files_are_readable_only_by_their_users():
    script = setup_script()
    provision = re.search(r"provision\.py\" meili(.*?)\n\s*\)", script, re.S).group(1)
    assert "--consumer-owner imgpipe-consumer" in provision and "--reader-group imgpipe-readers" in provision
    assert "chown meilisearch:meilisearch $ETC/meilisearch.env" in script and "chmod 0600 $ETC/meilisearch.env" in script
    # The master key reaches the set-up's provision.py and nothing else the script starts.
    assert script.count(". $ETC/meilisearch.env") == 1


def test_the_login_users_tool_reads_with_the_readers_key_only():
    script = setup_script()
    tool = re.search(r"cat > /usr/local/bin/imgpipe-run <<'EOF'\n(.*?)\nEOF", script, re.S).group(1)
    sourced = re.findall(r"\.\s+(/etc/imgpipe/\S+\.env)", tool)
    files = host_env_files()
    env: dict[str, str] = {}
    for path in sourced:
        env.update(files[path])
    assert held(env) == {READER}
