"""Static checks of the Docker deployment: docker-compose.yml, Dockerfile, .dockerignore,
.env.example, deploy/mosquitto/ and deploy/grafana/ (no Docker engine needed).

tests/integration/test_mosquitto_acl.py runs the Mosquitto configuration for real.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cityvitals.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
MOSQUITTO_DIR = ROOT / "deploy" / "mosquitto"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

PLATFORM_SERVICES = ("timescaledb", "mosquitto")
"""The services the platform cannot work without."""
COMPOSE_SET_SETTINGS = {
    "database_url",
    "mqtt_url",
    "data_dir",
    "api_enabled",
    "api_host",
    "api_port",
}
"""Settings docker-compose.yml sets itself (or that do not matter in a container)."""

VERSION_TAG = re.compile(r"^v?\d+\.\d+\.\d+([-.+][\w.-]+)?$")
"""An explicit release: major.minor.patch, optionally with a variant (`2.17.2-pg16`)."""
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def compose_variables(text: str) -> set[str]:
    """Variables Compose interpolates in `text`: `${VAR}`, `${VAR:-x}`, `$VAR`; not `$$`."""
    return {a or b for a, b in VARIABLE.findall(text.replace("$$", ""))}


def interpolate(text: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name]

    pattern = r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?\-][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
    return re.sub(pattern, one, text).replace("$$", "$")


def env_example_names() -> set[str]:
    """Every variable .env.example lists, set or commented out."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def env_example_commented_values() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE))


def volume_source(entry: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, is_bind) of a service volume in short or long syntax."""
    if isinstance(entry, dict):
        return entry.get("source", ""), entry["target"], entry.get("type") == "bind"
    source, target = entry.split(":")[:2]
    return source, target, source.startswith((".", "/", "~"))


def mosquitto_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (MOSQUITTO_DIR / "mosquitto.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out.setdefault(key, []).append(value.strip())
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# --- docker-compose.yml ---------------------------------------------------------------------


def test_every_pulled_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if "build" in service:
            assert image is None or not image.endswith(":latest"), name
            continue
        assert image, f"service {name} has neither image nor build"
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"service {name}: image {image!r} has no tag"
        assert tag != "latest", f"service {name}: image {image!r} is not pinned"
        assert VERSION_TAG.match(tag), f"service {name}: {image!r} is not an explicit version"


def test_the_platform_services_are_there(services: dict[str, dict[str, Any]]) -> None:
    assert {"timescaledb", "mosquitto", "migrate", "platform"} <= set(services)
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2.")


def test_bind_mounts_and_build_contexts_exist(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (ROOT / context / "Dockerfile").is_file(), name
        for entry in service.get("volumes", []):
            source, _, bind = volume_source(entry)
            if bind:
                assert (ROOT / source).exists(), f"service {name} mounts missing {source}"
            else:
                assert source in named, f"service {name}: volume {source} is not declared"


def test_files_the_services_run_are_mounted(services: dict[str, dict[str, Any]]) -> None:
    """A container path in an entrypoint or command under a bind mount exists in the repo."""
    checked = 0
    for name, service in services.items():
        mounts = [volume_source(v) for v in service.get("volumes", [])]
        args = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
        for arg in args:
            for source, target, bind in mounts:
                if bind and arg.startswith(target.rstrip("/") + "/"):
                    host = ROOT / source / arg[len(target.rstrip("/")) + 1 :]
                    assert host.is_file(), f"service {name} runs {arg}: {host} is missing"
                    checked += 1
    assert checked, "expected the mosquitto entrypoint to come from deploy/mosquitto"


def test_platform_waits_for_healthy_services_and_the_migrations(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in PLATFORM_SERVICES:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
    depends = services["platform"]["depends_on"]
    for name in PLATFORM_SERVICES:
        assert depends[name]["condition"] == "service_healthy", name
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert services["platform"]["command"] == ["run"]
    assert services["platform"]["restart"] == "unless-stopped"


def test_platform_urls_point_at_the_compose_services(services: dict[str, dict[str, Any]]) -> None:
    fake = {name: f"<{name}>" for name in compose_variables(COMPOSE_FILE.read_text())}
    db_env = services["timescaledb"]["environment"]
    for name in ("migrate", "platform"):
        env = services[name]["environment"]
        db = urlsplit(interpolate(env["CITYVITALS_DATABASE_URL"], fake))
        assert (db.scheme, db.hostname, db.port) == ("postgresql", "timescaledb", 5432)
        assert db.path == "/" + db_env["POSTGRES_DB"]
        assert db.username == db_env.get("POSTGRES_USER", "postgres")
        assert db.password == "<POSTGRES_PASSWORD>"
    mqtt = urlsplit(interpolate(services["platform"]["environment"]["CITYVITALS_MQTT_URL"], fake))
    listener = mosquitto_directives()["listener"][0].split()[0]
    assert (mqtt.scheme, mqtt.hostname, mqtt.port) == ("mqtt", "mosquitto", int(listener))
    assert (mqtt.username, mqtt.password) == ("cityvitals", "<MQTT_PLATFORM_PASSWORD>")
    assert "MQTT_PLATFORM_PASSWORD" in services["mosquitto"]["environment"]


def test_every_compose_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    used: set[str] = set()
    for text in _strings(compose):
        used |= compose_variables(text)
    assert {"POSTGRES_PASSWORD", "MQTT_PLATFORM_PASSWORD"} <= used
    assert used - env_example_names() == set()


def test_compose_variables_are_found() -> None:
    text = "a ${A} b ${B:-x} c ${C:?say} d $D e $$NOT f '$$SYS/#'"
    assert compose_variables(text) == {"A", "B", "C", "D"}


def test_platform_settings_pass_through_and_are_documented(
    services: dict[str, dict[str, Any]],
) -> None:
    env = services["platform"]["environment"]
    documented = env_example_names()
    for field in Settings.model_fields:
        name = f"CITYVITALS_{field.upper()}"
        assert name in documented, f"{name} is missing from .env.example"
        if field not in COMPOSE_SET_SETTINGS:
            assert name in env, f"platform does not pass {name} on"
            assert env[name] is None, f"{name}: pass it on without a value"
    for name, value in env.items():
        assert name.startswith("CITYVITALS_"), name
        assert value is not None or name in documented, name


def test_env_example_shows_the_defaults() -> None:
    values = {
        name.removeprefix("CITYVITALS_").lower(): value
        for name, value in env_example_commented_values().items()
        if name.startswith("CITYVITALS_")
    }
    given = {f: v for f, v in values.items() if f in Settings.model_fields}
    given = {f: v for f, v in given.items() if f not in COMPOSE_SET_SETTINGS}
    assert given
    parsed = Settings(**given)
    for field in given:
        assert getattr(parsed, field) == Settings.model_fields[field].default, field


def test_required_variables_are_empty_in_env_example() -> None:
    text = (ROOT / ".env.example").read_text()
    for name in (
        "POSTGRES_PASSWORD",
        "MQTT_PLATFORM_PASSWORD",
        "MQTT_SIMULATOR_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "GRAFANA_DB_PASSWORD",
    ):
        assert re.search(rf"^{name}=$", text, re.MULTILINE), f"{name} must be listed, empty"


def test_dot_env_is_never_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


# --- Dockerfile and .dockerignore -----------------------------------------------------------


def test_dockerfile_base_images_are_pinned() -> None:
    stages: set[str] = set()
    froms = [args for word, args in dockerfile_instructions() if word == "FROM"]
    assert froms
    for args in froms:
        parts = args.split()
        image = parts[0]
        if image.lower() in stages:
            continue
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2].lower())
        assert "$" not in image, f"FROM {image}: pin it literally"
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert repository and VERSION_TAG.match(tag), f"FROM {image} is not pinned"
    assert froms[-1].split()[0].startswith("python:3.11.")


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for word, args in dockerfile_instructions() if word == "USER"]
    assert users, "the Dockerfile has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_dockerfile_entrypoint_command_and_install() -> None:
    instructions = dockerfile_instructions()
    last = {word: args for word, args in instructions}
    assert json.loads(last["ENTRYPOINT"]) == ["cityvitals"]
    assert json.loads(last["CMD"]) == ["run"]
    installs = [a for w, a in instructions if w == "RUN" and re.search(r"\bpip (install|wheel)", a)]
    assert installs
    assert not any("[dev]" in a or "-e " in a for a in installs), "no dev extras or editables"


def test_dockerfile_health_check_is_valid_python() -> None:
    check = next(args for word, args in dockerfile_instructions() if word == "HEALTHCHECK")
    command = json.loads(check[check.index("CMD") + 3 :])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")
    assert "ingest_stats" in command[2]


def test_dockerignore_lets_in_only_what_the_build_needs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing and let in what the image needs"
    let_in = {line[1:].strip("/") for line in lines if line.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= let_in, f"packages missing from .dockerignore: {packages - let_in}"
    assert "pyproject.toml" in let_in
    assert let_in <= packages | {"pyproject.toml", "README.md", "LICENSE"}


# --- deploy/mosquitto -------------------------------------------------------------------------


def test_mosquitto_conf_requires_logins_and_keeps_messages(
    services: dict[str, dict[str, Any]],
) -> None:
    conf = mosquitto_directives()
    assert conf["allow_anonymous"] == ["false"]
    assert conf["password_file"] == ["/mosquitto/config/passwd"]
    assert conf["acl_file"] == ["/mosquitto/config/acl"]
    assert conf["persistence"] == ["true"]
    # The same lossless queueing as the broker cityvitals/services.py starts.
    assert conf["max_queued_messages"] == ["1000000"]
    assert conf["max_inflight_messages"] == ["0"]
    assert conf.get("max_queued_bytes", ["0"]) == ["0"]
    assert int(conf["message_size_limit"][0]) >= Settings.model_fields["max_payload_bytes"].default
    assert conf["listener"] == ["1883"]
    # The persistence directory is the service's named volume.
    location = conf["persistence_location"][0].rstrip("/")
    mounts = [volume_source(v) for v in services["mosquitto"]["volumes"]]
    assert any(not bind and target.rstrip("/") == location for _, target, bind in mounts)


def test_mosquitto_health_check_uses_the_listener(services: dict[str, dict[str, Any]]) -> None:
    test = services["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    args = shlex.split(test[1].replace("$$", "$"))
    assert args[0] == "mosquitto_sub"
    assert args[args.index("-p") + 1] == mosquitto_directives()["listener"][0]
    assert args[args.index("-u") + 1] == "cityvitals"


def test_entrypoint_creates_the_compose_users(services: dict[str, dict[str, Any]]) -> None:
    script = (MOSQUITTO_DIR / "entrypoint.sh").read_text()
    users = re.findall(r"mosquitto_passwd (?:-c )?-b \S+ (\w+) \"\$(\w+)\"", script)
    assert dict(users) == {
        "cityvitals": "MQTT_PLATFORM_PASSWORD",
        "simulator": "MQTT_SIMULATOR_PASSWORD",
    }
    env = services["mosquitto"]["environment"]
    for _, variable in users:
        assert variable in env
    assert "/mosquitto/config/passwd" in mosquitto_directives()["password_file"]


# --- the ACL, evaluated the way Mosquitto does ---------------------------------------------


def _acl() -> tuple[list[tuple[str, str]], dict[str | None, list[tuple[str, str]]]]:
    """(patterns, topic rules by user; None for rules before any `user` line)."""
    patterns: list[tuple[str, str]] = []
    topics: dict[str | None, list[tuple[str, str]]] = {}
    user: str | None = None
    for line in (MOSQUITTO_DIR / "acl").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
            continue
        assert words[0] in ("topic", "pattern"), line
        access, topic = (words[1], words[2]) if len(words) == 3 else ("readwrite", words[1])
        if words[0] == "pattern":
            patterns.append((access, topic))
        else:
            topics.setdefault(user, []).append((access, topic))
    return patterns, topics


def _matches(acl_topic: str, topic: str) -> bool:
    want, have = acl_topic.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or level not in ("+", have[i]):
            return False
    return len(want) == len(have)


def may(user: str, access: str, topic: str) -> bool:
    patterns, topics = _acl()
    rules = [(a, t.replace("%u", user)) for a, t in patterns] + topics.get(user, [])
    return any(a in (access, "readwrite") and _matches(t, topic) for a, t in rules)


def test_acl_grants_nothing_to_anonymous_clients() -> None:
    _, topics = _acl()
    assert None not in topics


@pytest.mark.parametrize(
    ("user", "access", "topic", "allowed"),
    [
        ("rg-1", "write", "city/d1/rain_gauge/rg-1/telemetry", True),
        ("rg-1", "write", "city/d9/rain_gauge/rg-1/status", True),
        ("rg-1", "write", "city/d1/rain_gauge/rg-2/telemetry", False),
        ("rg-1", "write", "city/d1/rain_gauge/rg-1/telemetry/more", False),
        ("rg-1", "write", "other/d1/rain_gauge/rg-1/telemetry", False),
        ("rg-1", "read", "city/d1/rain_gauge/rg-1/telemetry", False),
        ("rg-1", "read", "city/d1/rain_gauge/rg-2/telemetry", False),
        ("cityvitals", "read", "city/d1/rain_gauge/rg-1/telemetry", True),
        ("cityvitals", "read", "$SYS/broker/uptime", True),
        ("cityvitals", "write", "city/d1/rain_gauge/rg-1/telemetry", False),
        ("cityvitals", "write", "city/control-room/drainage", True),
        ("simulator", "write", "city/d1/rain_gauge/rg-2/telemetry", True),
        ("simulator", "read", "city/d1/rain_gauge/rg-2/telemetry", False),
    ],
)
def test_acl(user: str, access: str, topic: str, allowed: bool) -> None:
    assert may(user, access, topic) is allowed


def test_acl_device_rules_name_the_device_id_level() -> None:
    patterns, _ = _acl()
    assert patterns
    for access, topic in patterns:
        assert access == "write"
        assert topic.split("/")[3] == "%u", "the device id is the 4th topic level"


# --- every service ----------------------------------------------------------------------------


def test_every_long_running_service_has_a_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    """Compose's own check, or the image's (the Dockerfile's HEALTHCHECK); one-shot
    services (restart: "no") may do without."""
    image_has_check = any(w == "HEALTHCHECK" for w, _ in dockerfile_instructions())
    for name, service in services.items():
        if service.get("restart") == "no":
            continue
        check = service.get("healthcheck")
        if check is not None:
            assert check.get("test") and not check.get("disable"), name
        else:
            assert "build" in service and image_has_check, f"{name} has no health check"


def test_depends_on_waits_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for other, condition in (service.get("depends_on") or {}).items():
            target = services[other]
            wanted = condition["condition"]
            if wanted == "service_healthy":
                check = target.get("healthcheck")
                assert (check and not check.get("disable")) or "build" in target, (name, other)
            elif wanted == "service_completed_successfully":
                assert target.get("restart") == "no", (name, other)
            else:
                assert wanted == "service_started" and other == "platform", (name, other)


def test_every_named_volume_is_used(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    used = {
        volume_source(v)[0]
        for service in services.values()
        for v in service.get("volumes", [])
        if not volume_source(v)[2]
    }
    assert set(compose.get("volumes") or {}) == used


# --- grafana ----------------------------------------------------------------------------------


def _sdk_grafana_version() -> tuple[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if "grafana-foundation-sdk" in d)
    major, minor = re.search(r"!(\d+)\.(\d+)\.", pin).groups()  # type: ignore[union-attr]
    return major, minor


def test_grafana_is_the_version_the_dashboards_are_built_for(
    services: dict[str, dict[str, Any]],
) -> None:
    image = services["grafana"]["image"]
    repository, _, tag = image.rpartition(":")
    assert repository == "grafana/grafana-oss"
    major, minor = _sdk_grafana_version()
    assert tag.startswith(f"{major}.{minor}."), f"{image} vs the SDK's Grafana {major}.{minor}"


def test_grafana_has_no_anonymous_admin(services: dict[str, dict[str, Any]]) -> None:
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), "required, from the environment"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env


def test_grafana_waits_for_the_database_and_the_migrations(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    assert grafana["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert grafana["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    test = grafana["healthcheck"]["test"]
    assert "/api/health" in " ".join(test)
    assert grafana["restart"] == "unless-stopped"


def _grafana_mount(services: dict[str, dict[str, Any]], target: str) -> Path:
    for entry in services["grafana"]["volumes"]:
        source, mounted, bind = volume_source(entry)
        if bind and mounted.rstrip("/") == target.rstrip("/"):
            return ROOT / source
    raise AssertionError(f"nothing is mounted at {target}")


def test_grafana_datasource_provisioning(services: dict[str, dict[str, Any]]) -> None:
    from dashboards.sql import DATASOURCE_TYPE
    from dashboards.style import DATASOURCE_UID

    folder = _grafana_mount(services, "/etc/grafana/provisioning/datasources")
    files = sorted(folder.glob("*.yaml"))
    assert files
    (ds,) = yaml.safe_load(files[0].read_text())["datasources"]
    assert (ds["uid"], ds["type"]) == (DATASOURCE_UID, DATASOURCE_TYPE)
    assert ds["user"] == "cityvitals_grafana", "the read-only role of migration 0007"
    env = services["grafana"]["environment"]
    dumped = yaml.safe_dump(ds)
    given = {name: env[name] for name in compose_variables(dumped)}
    ds = yaml.safe_load(interpolate(dumped, given))
    db = services["timescaledb"]["environment"]
    assert ds["url"] == "timescaledb:5432"
    assert ds["jsonData"]["database"] == db["POSTGRES_DB"]
    assert ds["secureJsonData"]["password"].startswith("${GRAFANA_DB_PASSWORD")
    # The same password the migrations give the role.
    assert (
        "cityvitals.grafana_password=${GRAFANA_DB_PASSWORD"
        in (services["migrate"]["environment"]["PGOPTIONS"])
    )
    assert ds["editable"] is False


def test_grafana_dashboard_provisioning(services: dict[str, dict[str, Any]]) -> None:
    from dashboards.build import DEFAULT_OUT, build_all

    folder = _grafana_mount(services, "/etc/grafana/provisioning/dashboards")
    (provider,) = yaml.safe_load(next(folder.glob("*.yaml")).read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False, "generated dashboards are not edited in the UI"
    dashboards = _grafana_mount(services, provider["options"]["path"])
    assert dashboards.resolve() == DEFAULT_OUT.resolve()
    assert {p.name for p in dashboards.glob("*.json")} == {b.filename for b in build_all()}
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"].rstrip("/") + "/")
    assert (dashboards / home.rsplit("/", 1)[1]).is_file()
