"""docs/asyncapi.json: what `convbus asyncapi` generates from the models and the topology now
(so it fails when either changes without the document), a valid AsyncAPI 3.0 document, and
complete: every queue kind, header and event of the bus is in it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import jsonschema

from cli.asyncapi import text
from shared import amqp
from shared.asyncapi import document
from shared.schemas import EventName
from shared.topology import QueueKind, Topology

ROOT = Path(__file__).parents[2]
CHECKED_IN = ROOT / "docs" / "asyncapi.json"
SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"


def test_the_checked_in_document_is_current() -> None:
    assert CHECKED_IN.read_text() == text(), (
        "docs/asyncapi.json is not what the models and the topology say now: run "
        "`make asyncapi` and commit it"
    )


def test_it_is_a_valid_asyncapi_3_document() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document())]
    assert not errors, errors[:5]
    broken = json.loads(CHECKED_IN.read_text())
    broken["operations"]["receiveTask"]["action"] = "consume"
    assert not validator.is_valid(broken)  # the schema does check


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves() -> None:
    doc = document()
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref


def test_every_queue_kind_and_its_arguments_are_there() -> None:
    doc = document("ns")
    topo = Topology("ns")
    addresses = {c["address"]: c for c in doc["channels"].values() if c["address"]}
    kinds = {
        topo.classify(
            address.replace("{pool}", "p")
            .replace("{ms}", "5")
            .replace("{child}-{id}", "c-1")
            .replace("{id}", "1")
        )
        for address in addresses
    }
    assert {k.kind for k in kinds if k is not None} == set(get_args(QueueKind))
    pool = addresses["ns.pool.{pool}"]["bindings"]["amqp"]
    assert pool["x-arguments"] == {
        k: (v.replace("ns.pool.p", "ns.pool.{pool}") if isinstance(v, str) else v)
        for k, v in topo.pool_queue_arguments("p").items()
    }
    assert addresses["ns.tracker"]["bindings"]["amqp"]["x-arguments"] == (
        topo.tracker_queue_arguments()
    )


def test_every_header_and_event_is_there() -> None:
    doc = document()
    headers = doc["components"]["messages"]["Task"]["headers"]["properties"]
    constants = {v for k, v in vars(amqp).items() if k.endswith("_HEADER")}
    assert set(headers) == constants
    event = doc["components"]["schemas"]["Event"]["properties"]["event"]
    assert set(event["enum"]) == set(get_args(EventName))
    task = doc["components"]["schemas"]["TaskMessage"]["properties"]
    assert "inputs" in task and "task_id" in task and "from" in task
    assert re.fullmatch(r"\d+\.\d+\.\d+", doc["info"]["version"])
