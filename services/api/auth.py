"""Who holds which key, and what each key may do."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from shared.errors import ConfigError
from shared.settings import SEED_DEV_API_KEY, ApiSettings, KeySpec

ALL_SCOPES: frozenset[str] = frozenset({"send", "callback", "read", "admin"})
#: The principal of RELAY_API_KEY: the seed's single key, allowed everything.
ROOT = "relay"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The holder of a valid key."""

    name: str
    scopes: frozenset[str]
    pools: frozenset[str] | None
    send_as_any: bool

    def may_serve(self, pool: str) -> bool:
        return self.pools is None or pool in self.pools


class KeyRing:
    """Finds a key's principal, comparing hashes in constant time over every key."""

    def __init__(self, specs: list[KeySpec]) -> None:
        if not specs:
            raise ConfigError("no API key is configured: set RELAY_API_KEY or RELAY_KEYS")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError("two API keys share a name")
        self._specs = [(bytes.fromhex(s.sha256), s) for s in specs]

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> KeyRing:
        specs = list(settings.keys)
        if settings.keys_file:
            try:
                specs += TypeAdapter(list[KeySpec]).validate_json(
                    Path(settings.keys_file).read_bytes()
                )
            except (OSError, ValidationError, json.JSONDecodeError) as exc:
                raise ConfigError(f"RELAY_KEYS_FILE {settings.keys_file}: {exc}") from exc
        published = key_hash(SEED_DEV_API_KEY)
        if not settings.dev_mode and any(s.sha256 == published for s in specs):
            raise ConfigError(f"a key in RELAY_KEYS is the seed's published key ({published[:8]}…)")
        if settings.api_key is not None or settings.dev_mode or not specs:
            root = settings.effective_api_key()  # refuses to start without any key
            specs.append(
                KeySpec(name=ROOT, sha256=key_hash(root), scopes=ALL_SCOPES, send_as_any=True)
            )
        return cls(specs)

    def find(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode()).digest()
        found: KeySpec | None = None
        for stored, spec in self._specs:  # no early exit: the time says nothing of the key
            if hmac.compare_digest(digest, stored):
                found = spec
        if found is None:
            return None
        return Principal(found.name, frozenset(found.scopes), found.pools, found.send_as_any)
