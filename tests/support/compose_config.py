"""Docker Compose's reading of this repo's compose files, for the tests: interpolation and merge.

Docker Compose v2 (a Go program) has no package here (Debian 12 ships only v1). This follows the
compose-spec's "Interpolation" and "Merge" chapters for what docker-compose.yml and
docker-compose.external.yml use: `${VAR}`, `${VAR:-default}`, `${VAR:?message}`, `${VAR:+alt}`
(and without `:`), nesting, `$$`; the `!reset` and `!override` tags; mappings merged by key,
other values replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
EXTERNAL = ROOT / "docker-compose.external.yml"
ENV_EXAMPLE = ROOT / ".env.example"


# --- Compose's variable interpolation (compose-spec "Interpolation"), enough for these files.

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class MissingVariable(Exception):
    """A `${VAR:?message}` or `${VAR?message}` whose variable is missing: Compose stops."""


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` closing the `${` that ends just before `start` (nesting allowed)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def _split_braced(inner: str) -> tuple[str, str, str]:
    """`VAR:-default` into ("VAR", ":-", "default"); no operator: ("VAR", "", "")."""
    match = _NAME.match(inner)
    if match is None:
        raise ValueError(f"not a variable: ${{{inner}}}")
    rest = inner[match.end() :]
    if not rest:
        return match.group(), "", ""
    for op in _OPERATORS:
        if rest.startswith(op):
            return match.group(), op, rest[len(op) :]
    raise ValueError(f"unsupported expression: ${{{inner}}}")


def _substitute(name: str, op: str, arg: str, env: Mapping[str, str]) -> str:
    value = env.get(name)
    is_set, non_empty = value is not None, bool(value)
    if op == "":
        return value or ""
    if op in (":-", "-"):
        use_value = non_empty if op == ":-" else is_set
        return (value or "") if use_value else interpolate(arg, env)
    if op in (":?", "?"):
        if non_empty if op == ":?" else is_set:
            return value or ""
        raise MissingVariable(f"{name}: {interpolate(arg, env)}")
    # ":+" and "+": the replacement when the variable is (non-empty and) set.
    return interpolate(arg, env) if (non_empty if op == ":+" else is_set) else ""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`text` with `$VAR`, `${VAR}`, `${VAR:-x}`, `${VAR:?x}`, `${VAR:+x}` (and without `:`)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_substitute(*_split_braced(text[i + 2 : end]), env))
            i = end + 1
        elif match := _NAME.match(text, i + 1):
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:
            raise ValueError(f"a lone $ in {text!r} (write $$)")
    return "".join(out)


def variables(text: str) -> set[str]:
    """Every variable `text` names, those in defaults and messages included."""
    found: set[str] = set()
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            name, _op, arg = _split_braced(text[i + 2 : end])
            found |= {name} | variables(arg)
            i = end + 1
        elif text[i] == "$" and (match := _NAME.match(text, i + 1)):
            found.add(match.group())
            i = match.end()
        else:
            i += 1
    return found


# --- Loading: YAML with Compose's merge tags, then the merge of several files.


class _Reset:
    """`!reset`: the attribute is removed from what the earlier files said."""


RESET = _Reset()


@dataclass(frozen=True)
class Override:
    """`!override value`: replaces what the earlier files said, without merging."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """A safe loader that knows Compose's `!reset` and `!override` tags."""


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    assert isinstance(node, yaml.ScalarNode)
    return Override(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", lambda _loader, _node: RESET)
ComposeLoader.add_constructor("!override", _construct_override)


def load(path: Path) -> Any:
    with path.open() as f:
        return yaml.load(f, Loader=ComposeLoader)  # a SafeLoader subclass: no arbitrary objects


def walk_strings(node: Any, fn: Callable[[str], str]) -> Any:
    """`node` with `fn` applied to every string value (mapping keys are left alone)."""
    if isinstance(node, dict):
        return {key: walk_strings(value, fn) for key, value in node.items()}
    if isinstance(node, list):
        return [walk_strings(value, fn) for value in node]
    if isinstance(node, Override):
        return Override(walk_strings(node.value, fn))
    if isinstance(node, str):
        return fn(node)
    return node


def merge(base: Any, over: Any) -> Any:
    """Compose's merge of a later file into an earlier one, for the kinds of value used here."""
    if isinstance(over, Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            if value is RESET:
                merged.pop(key, None)
            else:
                merged[key] = merge(merged.get(key), value)
        return merged
    return over


def env_example() -> dict[str, str]:
    """The active assignments of .env.example, as Compose reads a .env file."""
    return {k: v or "" for k, v in dotenv_values(ENV_EXAMPLE, interpolate=False).items()}


def env_example_commented() -> dict[str, str]:
    """The commented-out `# VAR=value` examples (the external RabbitMQ and PostgreSQL).

    An example of a variable that is also set (the form of RELAY_KEYS) is not one of them.
    """
    found = re.findall(r"^# ?([A-Z][A-Z0-9_]*)=(\S*)$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    active = env_example()
    return {name: value for name, value in found if name not in active}


def compose_config(files: list[Path], env: Mapping[str, str]) -> dict[str, Any]:
    """The files interpolated one by one with `env`, then merged in order."""
    config: Any = None
    for path in files:
        loaded = walk_strings(load(path), lambda text: interpolate(text, env))
        config = loaded if config is None else merge(config, loaded)
    assert isinstance(config, dict)
    return config


def active_services(
    config: dict[str, Any], profiles: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The services Compose starts with these profiles enabled."""
    services: dict[str, Any] = config["services"]
    return {
        name: service
        for name, service in services.items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "commands are lists: no shell, no word splitting"
    return [str(part) for part in command]
