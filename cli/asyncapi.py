"""`convbus asyncapi`: the AMQP side of the bus as an AsyncAPI 3.0 document (JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, version

from shared.asyncapi import document


def _version() -> str:
    try:
        return version("convbus")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.1.0"


def text(namespace: str = "{ns}") -> str:
    """The document as docs/asyncapi.json holds it."""
    return json.dumps(document(namespace, _version()), indent=2, ensure_ascii=False) + "\n"


def _asyncapi(args: argparse.Namespace) -> None:
    sys.stdout.write(text(args.namespace))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    asyncapi = sub.add_parser(
        "asyncapi",
        help="print the AMQP side of the bus as an AsyncAPI 3.0 document (docs/asyncapi.json)",
    )
    asyncapi.add_argument(
        "--namespace",
        default="{ns}",
        help="the names of this RELAY_NAMESPACE (default: the placeholder {ns})",
    )
    asyncapi.set_defaults(func=_asyncapi)
