"""Webhooks: which URLs a task's `notify` may name, and how a delivery is signed.

A delivery is signed with HMAC-SHA256 over ``"{timestamp}.{body}"`` (the body's bytes as
sent), with RELAY_WEBHOOK_SECRET; the receiver recomputes it and compares in constant time,
and refuses a timestamp far from its clock (a replay). docs/wire.md, "Webhooks", has the few
lines a receiver needs.

SSRF: a webhook goes only to a host the operator listed (RELAY_WEBHOOK_HOSTS); redirects are
never followed; and a listed host given by name must not resolve to a private, loopback,
link-local or otherwise non-public address (an IP address listed as such is taken as meant).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

#: The headers of a delivery.
SIGNATURE_HEADER = "X-Convbus-Signature"
TIMESTAMP_HEADER = "X-Convbus-Timestamp"
DELIVERY_HEADER = "X-Convbus-Delivery"


def allowed_hosts(setting: str) -> set[str]:
    """RELAY_WEBHOOK_HOSTS as a set of `host` and `host:port` (lower case)."""
    return {h.strip().lower() for h in setting.split(",") if h.strip()}


def host_and_port(url: str) -> tuple[str, int]:
    """The URL's host (lower case) and port; ValueError if it has none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname.lower(), port


def refusal(url: str, hosts: set[str]) -> str | None:
    """Why a webhook may not go to `url` (None: it may)."""
    if not hosts:
        return "webhooks are off on this bus (RELAY_WEBHOOK_HOSTS is empty)"
    try:
        host, port = host_and_port(url)
    except ValueError as exc:
        return str(exc)
    if host in hosts or f"{host}:{port}" in hosts:
        return None
    return f"host {host}:{port} is not among RELAY_WEBHOOK_HOSTS"


def is_literal_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(address: str) -> bool:
    """Whether an address a name resolved to may be called (not private, loopback, …); an IPv6
    address that carries an IPv4 one (mapped, 6to4, NAT64) is judged by that one."""
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded.is_global
    return ip.is_global


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The value of X-Convbus-Signature: ``v1=`` and the hex HMAC-SHA256."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={digest.hexdigest()}"


def verify(
    secret: str, timestamp: str, body: bytes, signed: str, *, now: float, leeway: float = 300
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent_at) > leeway:
        return False
    return hmac.compare_digest(signature(secret, sent_at, body), signed)
