"""The compose deployment, checked without a Docker engine.

docker-compose.yml (alone, and with docker-compose.external.yml), .env.example, the Dockerfile,
.dockerignore and deploy/prometheus.yml: interpolated with .env.example's values the way Docker
Compose does, then validated against the Compose Specification's JSON schema and held against
the code: every command parses with `convbus`'s own parser, every RELAY_* variable is a field
of the service's settings class and its value parses there, the health checks probe the ports
the services serve (and the check itself is run against a local server), every variable is in
.env.example and README.md.

The schema is the compose-spec project's `schema/compose-spec.json` (Apache-2.0) as vendored by
the PyPI package check-jsonschema 0.39.0 (`check_jsonschema/builtin_schemas/vendor/`, refreshed
by its maintainers from compose-spec's main branch; JSON Schema draft 2020-12). Bump that dev
dependency to follow the spec. tests/e2e/test_deploy.py runs the services' compose commands and
environments as processes. What no test here can tell: whether Docker Engine and Compose run it
(there is no engine on the machines these tests run on).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jsonschema
import pytest
import yaml
from pydantic import AliasChoices

from cli.main import parser
from shared.settings import ApiSettings, BusSettings, ChildSettings, TrackerSettings
from tests.support.compose_config import (
    COMPOSE,
    EXTERNAL,
    ROOT,
    MissingVariable,
    active_services,
    command_of,
    compose_config,
    env_example,
    env_example_commented,
    interpolate,
    load,
    variables,
    walk_strings,
)

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
README = ROOT / "README.md"

#: The settings class each `convbus` command reads (cli/).
SETTINGS: dict[str, type[BusSettings]] = {
    "api": ApiSettings,
    "child": ChildSettings,
    "tracker": TrackerSettings,
    "migrate": BusSettings,
    "webhooks": ChildSettings,
}
#: The bus services that run until stopped, and serve /readyz and /metrics.
LONG_RUNNING = {"api", "tracker", "child", "webhooks"}


@pytest.fixture(scope="module")
def dev_env() -> dict[str, str]:
    return env_example()


@pytest.fixture(scope="module")
def config(dev_env: dict[str, str]) -> dict[str, Any]:
    return compose_config([COMPOSE], dev_env)


@pytest.fixture(scope="module")
def external_config(dev_env: dict[str, str]) -> dict[str, Any]:
    return compose_config([COMPOSE, EXTERNAL], {**dev_env, **env_example_commented()})


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    loaded: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return loaded


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def bus_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the bus's image, by name."""
    return {
        name: service
        for name, service in config["services"].items()
        if service.get("image") == config["services"]["api"]["image"]
    }


def settings_class(service: dict[str, Any]) -> type[BusSettings]:
    return SETTINGS[command_of(service)[1]]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No RELAY_* or LYNKER_* variable of this machine leaks into the settings built here."""
    for name in list(os.environ):
        if name.upper().startswith(("RELAY_", "LYNKER_")):
            monkeypatch.delenv(name)
    yield monkeypatch


def settings_for(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> BusSettings:
    """The service's settings, built from exactly the environment compose gives it."""
    with monkeypatch.context() as patch:
        for name, value in service.get("environment", {}).items():
            patch.setenv(name, "" if value is None else str(value))
        return settings_class(service)()


def env_names(cls: type[BusSettings]) -> set[str]:
    """The environment variables a settings class reads (prefix + field, or its aliases)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


# --- The interpolation helper does what Compose documents.


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${SET}", "yes"),
        ("$SET/x", "yes/x"),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET:-${SET}}", "yes"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("$${SET}", "${SET}"),
        ("${EMPTY?must be set}", ""),
    ],
)
def test_interpolation_follows_the_compose_spec(template: str, expected: str) -> None:
    assert interpolate(template, {"SET": "yes", "EMPTY": ""}) == expected


@pytest.mark.parametrize("template", ["${EMPTY:?needed}", "${UNSET:?needed}", "${UNSET?needed}"])
def test_required_variables_stop_the_interpolation(template: str) -> None:
    with pytest.raises(MissingVariable, match="needed"):
        interpolate(template, {"EMPTY": ""})


# --- The compose files are valid Compose.


def test_compose_file_validates_against_the_compose_spec(
    schema: dict[str, Any], config: dict[str, Any]
) -> None:
    assert schema_errors(schema, config) == []


def test_compose_with_external_services_validates_against_the_compose_spec(
    schema: dict[str, Any], external_config: dict[str, Any]
) -> None:
    assert schema_errors(schema, external_config) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["api"]["depends_on"]["rabbitmq"].update(condition="started"),
        lambda c: c["services"]["api"].update(healthchek=c["services"]["api"]["healthcheck"]),
        lambda c: c["services"]["child"]["deploy"].update(replicas=[2]),
        lambda c: c["services"]["tracker"]["healthcheck"].update(test={"CMD": "x"}),
    ],
    ids=["unknown-condition", "misspelt-key", "replicas-list", "healthcheck-test-mapping"],
)
def test_the_schema_catches_a_broken_file(
    schema: dict[str, Any], config: dict[str, Any], breakage: Callable[[dict[str, Any]], None]
) -> None:
    broken = copy.deepcopy(config)
    breakage(broken)
    assert schema_errors(schema, broken)


@pytest.mark.parametrize("missing", ["RABBITMQ_PASSWORD", "POSTGRES_PASSWORD", "RELAY_API_KEY"])
def test_compose_refuses_to_start_without_a_secret(dev_env: dict[str, str], missing: str) -> None:
    env = {name: value for name, value in dev_env.items() if name != missing}
    with pytest.raises(MissingVariable, match=f"set {missing} in .env"):
        compose_config([COMPOSE], env)


def test_external_services_need_their_urls(dev_env: dict[str, str]) -> None:
    with pytest.raises(MissingVariable, match="RELAY_AMQP_URL"):
        compose_config([COMPOSE, EXTERNAL], dev_env)


# --- Variables: each one in .env.example and README.md, and none left unused.


def compose_variables() -> set[str]:
    found: set[str] = set()

    def collect(text: str) -> str:
        found.update(variables(text))
        return text

    for path in (COMPOSE, EXTERNAL):
        walk_strings(load(path), collect)
    return found


def test_every_variable_is_in_env_example_and_nothing_else_is() -> None:
    listed = set(env_example()) | set(env_example_commented())
    used = compose_variables()
    assert used - listed == set(), "used by the compose files, missing from .env.example"
    assert listed - used == set(), "in .env.example, used by no compose file"


def test_every_variable_is_documented_in_the_readme_deploy_section() -> None:
    text = README.read_text()
    assert "\n## Deploy\n" in text
    deploy = text.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in compose_variables() if f"`{name}`" not in deploy)
    assert missing == []
    for promise in ("docker compose up -d --scale child=4", "http://localhost:15672", "/metrics"):
        assert promise in deploy


# --- The services: commands, settings, health, dependencies, credentials, scaling.


def test_every_bus_service_runs_a_convbus_command_that_parses(config: dict[str, Any]) -> None:
    services = bus_services(config)
    assert set(services) == {"migrate", "api", "tracker", "child", "webhooks"}
    for name, service in services.items():
        command = command_of(service)
        assert command[0] == "convbus", name
        args = parser().parse_args(command[1:])
        assert args.command == name


@pytest.mark.parametrize("use_external", [False, True], ids=["bundled", "external"])
def test_every_relay_variable_is_a_setting_and_its_value_parses(
    config: dict[str, Any],
    external_config: dict[str, Any],
    clean_env: pytest.MonkeyPatch,
    use_external: bool,
) -> None:
    chosen = external_config if use_external else config
    for name, service in bus_services(chosen).items():
        cls = settings_class(service)
        environment: dict[str, Any] = service["environment"]
        bus_variables = {key for key in environment if key.startswith(("RELAY_", "LYNKER_"))}
        assert bus_variables - env_names(cls) == set(), f"{name}: not a field of {cls.__name__}"
        settings = settings_for(service, clean_env)
        assert settings.log_format == "json"
        if isinstance(settings, ApiSettings | ChildSettings):
            assert settings.effective_api_key()  # the dev values start; see also the next test


def test_with_only_the_secrets_set_every_service_reads_production_settings(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """Only the required secrets set: dev mode off, and every default value parses."""
    required = {"RABBITMQ_PASSWORD": "r-secret", "POSTGRES_PASSWORD": "p-secret"}
    production = compose_config([COMPOSE], {**required, "RELAY_API_KEY": "a-long-random-key"})
    for name, service in bus_services(production).items():
        settings = settings_for(service, clean_env)
        assert settings.dev_mode is False, name
        if isinstance(settings, ApiSettings | ChildSettings):
            assert settings.effective_api_key() == "a-long-random-key", name


def test_the_tracker_and_migrate_get_no_api_key(config: dict[str, Any]) -> None:
    for name in ("tracker", "migrate"):
        assert "RELAY_API_KEY" not in config["services"][name]["environment"]


def test_the_child_calls_back_the_api_service(
    config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    child = settings_for(config["services"]["child"], clean_env)
    api_port = parser().parse_args(command_of(config["services"]["api"])[1:]).port
    assert isinstance(child, ChildSettings)
    assert child.api_base == f"http://api:{api_port}"


def health_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "exec form: no shell in the way"
    url = str(test[-1])
    assert url.startswith("http://127.0.0.1:")
    return url


def served_port(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> int:
    """Where the service serves /readyz and /metrics inside its container."""
    command = command_of(service)
    if command[1] == "api":
        port: int = parser().parse_args(command[1:]).port
        return port
    settings = settings_for(service, monkeypatch)
    assert isinstance(settings, ChildSettings | TrackerSettings)
    assert settings.ops_host == "0.0.0.0", "Prometheus scrapes from another container"
    return settings.ops_port


def test_every_long_running_service_has_a_health_check(config: dict[str, Any]) -> None:
    one_shot = {
        name for name, service in config["services"].items() if service.get("restart") == "no"
    }
    assert one_shot == {"migrate"}
    for name, service in active_services(config, frozenset({"monitoring"})).items():
        if name not in one_shot:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
            assert not service["healthcheck"].get("disable"), name


def test_health_checks_probe_the_readiness_the_services_serve(
    config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    for name in LONG_RUNNING:
        service = config["services"][name]
        url = urlsplit(health_url(service))
        assert url.path == "/readyz", name
        assert url.port == served_port(service, clean_env), name


class _Readiness(BaseHTTPRequestHandler):
    ready = True

    def do_GET(self) -> None:
        status = 404 if self.path != "/readyz" else 200 if type(self).ready else 503
        self.send_response(status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def readiness_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Readiness]]]:
    handler = type("Readiness", (_Readiness,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_health_check_command_passes_on_200_and_fails_on_503(
    config: dict[str, Any], readiness_server: tuple[ThreadingHTTPServer, type[_Readiness]]
) -> None:
    server, handler = readiness_server
    for name in LONG_RUNNING:
        test = config["services"][name]["healthcheck"]["test"]
        url = urlsplit(health_url(config["services"][name]))
        local = urlunsplit(url._replace(netloc=f"127.0.0.1:{server.server_address[1]}"))
        argv = [sys.executable, *test[2:-1], local]  # "python" is the image's venv python
        for ready, succeeds in ((True, True), (False, False)):
            handler.ready = ready
            done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
            assert (done.returncode == 0) is succeeds, (name, ready, done.stderr)


def test_every_dependency_waits_on_a_condition_that_can_be_met(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert isinstance(spec, dict) and "condition" in spec, f"{name} -> {target}"
            if spec["condition"] == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} -> {target}: no check"
            else:
                assert spec["condition"] == "service_completed_successfully", f"{name}"
                assert services[target].get("restart") == "no", f"{target} is not one-shot"


def test_nothing_reads_the_database_before_the_migration(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "tracker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    # The child reaches the database only through the API, which waits for the migration.
    assert services["child"]["depends_on"]["api"] == {"condition": "service_healthy"}


def test_external_setup_starts_no_bundled_service_and_waits_for_none(
    external_config: dict[str, Any],
) -> None:
    active = active_services(external_config)
    assert set(active) == {"migrate", "api", "tracker", "child", "webhooks"}
    for name, service in active.items():
        assert set(service.get("depends_on", {})) <= set(active), name
        environment = service["environment"]
        assert "rabbitmq:" not in environment["RELAY_AMQP_URL"], name
        assert "postgres:" not in environment["RELAY_DATABASE_URL"], name


def urls_in(service: dict[str, Any]) -> list[str]:
    values = [str(v) for v in service.get("environment", {}).values() if v is not None]
    return [v for v in values if re.match(r"^[a-z][a-z0-9+.-]*://", v)]


def test_no_service_uses_guest_credentials(
    config: dict[str, Any], external_config: dict[str, Any], dev_env: dict[str, str]
) -> None:
    assert "guest" not in COMPOSE.read_text() + EXTERNAL.read_text()
    assert dev_env["RABBITMQ_USER"] != "guest"
    rabbit = config["services"]["rabbitmq"]["environment"]
    assert rabbit["RABBITMQ_DEFAULT_USER"] != "guest"
    assert rabbit["RABBITMQ_DEFAULT_PASS"] not in ("", "guest")
    for chosen in (config, external_config):
        for name, service in chosen["services"].items():
            for url in urls_in(service):
                parts = urlsplit(url)
                if parts.username is not None:
                    assert parts.username != "guest", name
                    assert parts.password not in (None, "", "guest"), name


def test_every_bus_service_is_given_the_bundled_broker_and_its_user(
    config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    rabbit = config["services"]["rabbitmq"]["environment"]
    for name, service in bus_services(config).items():
        settings = settings_for(service, clean_env)
        for url in (settings.amqp_url, settings.management_url):
            assert url is not None, name
            parts = urlsplit(url.get_secret_value())
            assert parts.hostname == "rabbitmq", name
            assert (parts.username, parts.password) == (
                rabbit["RABBITMQ_DEFAULT_USER"],
                rabbit["RABBITMQ_DEFAULT_PASS"],
            ), name


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def test_the_child_service_can_be_replicated_and_its_stop_grace_exceeds_the_shutdown_grace(
    config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    child = config["services"]["child"]
    # Replicas must not collide: no fixed name, no host port.
    assert "container_name" not in child
    assert "ports" not in child
    assert int(child["deploy"]["replicas"]) >= 1
    settings = settings_for(child, clean_env)
    assert isinstance(settings, ChildSettings)
    assert child["volumes"] == [settings.state_dir], "each replica's record on a volume"
    grace = duration_seconds(child["stop_grace_period"])
    assert grace > settings.shutdown_grace, "Docker would SIGKILL in-flight tasks"


def test_the_api_is_published_on_its_port(config: dict[str, Any]) -> None:
    api = config["services"]["api"]
    port = parser().parse_args(command_of(api)[1:]).port
    assert [str(p).rsplit(":", 1)[-1] for p in api["ports"]] == [str(port)]


def test_prometheus_scrapes_every_service_where_it_serves_metrics(
    config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    prometheus = config["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mount = f"./{PROMETHEUS.relative_to(ROOT)}:/etc/prometheus/prometheus.yml:ro"
    assert mount in prometheus["volumes"]
    scraped: dict[str, int] = {}
    for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                scraped[name] = sd["port"]
    expected = {name: served_port(config["services"][name], clean_env) for name in LONG_RUNNING}
    assert scraped == expected


# --- The image.


@dataclass
class Instruction:
    keyword: str
    args: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: list[list[Instruction]] = [[]]
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages[1:]


def test_the_image_is_multi_stage_slim_and_runs_as_a_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert re.match(r"python:\$\{PYTHON_VERSION\}-slim\b", stage[0].args), stage[0].args
    final = stages[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0")
    assert not any("pip" in i.args for i in final if i.keyword == "RUN"), "nothing built here"


def test_the_image_runs_convbus() -> None:
    final = dockerfile_stages()[-1]
    assert not [i for i in final if i.keyword == "ENTRYPOINT"]
    command = json.loads(next(i.args for i in reversed(final) if i.keyword == "CMD"))
    assert command[0] == "convbus"
    assert parser().parse_args(command[1:]).command == "api"


def test_dependencies_are_their_own_layer() -> None:
    build = dockerfile_stages()[0]
    steps = [f"{i.keyword} {i.args}" for i in build]

    def first(pattern: str) -> int:
        return next(n for n, step in enumerate(steps) if re.search(pattern, step))

    deps = first(r"^COPY pyproject\.toml requirements\.lock ")
    install = first(r"^RUN .*pip .*install -c requirements\.lock")
    source = first(r"^COPY (shared|services) ")
    assert deps < install < source


def test_the_image_exposes_the_ports_and_sets_the_state_dir_compose_uses(
    config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    final = dockerfile_stages()[-1]
    exposed = {int(p) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    ports = {served_port(config["services"][name], clean_env) for name in LONG_RUNNING}
    assert exposed == ports
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    child = settings_for(config["services"]["child"], clean_env)
    assert isinstance(child, ChildSettings)
    assert f"RELAY_STATE_DIR={child.state_dir}" in env


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path, or a folder above it, wins."""
    candidates = [path] + ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
    result = False
    for pattern in patterns:
        exclude = not pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = exclude
    return result


def test_the_build_context_is_what_the_image_copies_and_no_secret() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for stage in dockerfile_stages()
        for i in stage
        if i.keyword == "COPY" and not i.args.startswith("--from")
        for source in i.args.split()[:-1]
    ]
    assert copied
    for source in copied:
        top = ROOT / source
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            relative = path.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not ignored(relative, patterns), f"{relative} is copied but ignored"
    for secret in (".env", ".git/config", ".venv/bin/python", "tests/conftest.py", "convbus.db"):
        assert ignored(secret, patterns), f"{secret} would be sent to the builder"
    assert ignored("shared/__pycache__/settings.cpython-311.pyc", patterns)
