"""A process's ops server (health, readiness, metrics), as the tests read it."""

from __future__ import annotations

import re

import httpx

from tests.support.bus import Proc


def ops(proc: Proc, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{proc.port}{path}", timeout=5)


def answers(proc: Proc, path: str) -> httpx.Response | None:
    if proc.popen.poll() is not None:
        raise AssertionError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")
    try:
        return ops(proc, path)
    except httpx.HTTPError:
        return None


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in the Prometheus text format, or None when absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:]+)(\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return None


def metric(proc: Proc, name: str, **labels: str) -> float | None:
    return sample(ops(proc, "/metrics").text, name, **labels)
