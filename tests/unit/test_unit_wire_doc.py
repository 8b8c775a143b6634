"""docs/wire.md against the code: its argument tables, header tables and examples.

A child in another language is written from that page alone, so every queue argument, header
name and example body it shows must be what shared/topology.py, shared/amqp.py and
shared/schemas.py say: a child that declares a queue with one argument off is refused with
`406 PRECONDITION_FAILED`. The page is read as text (regular expressions, no markdown library);
no broker is needed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from shared import amqp
from shared.retry import RetryPolicy
from shared.schemas import CallbackRequest, Event, SendRequest, TaskMessage, TaskStatusResponse
from shared.topology import (
    CONTROL_EVENTS,
    DELAY_QUEUE_IDLE_MS,
    DELIVERY_LIMIT,
    PARKED_DELIVERY_LIMIT,
    Topology,
)

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "wire.md").read_text(encoding="utf-8")
#: The worked example's namespace and pool, also put in for `{ns}` and `{pool}` in the tables.
NS = "relay"
POOL = "summarizer"
TOPO = Topology(NS)

#: Every header the bus sets, by the constants of shared/amqp.py (`x-attempt`, ...).
HEADERS = {
    value
    for name, value in vars(amqp).items()
    if name.endswith("_HEADER") and isinstance(value, str) and value.startswith("x-")
}
#: The headers services/child/worker.py puts on a retried copy (_retry_or_park) and on a
#: parked one (_park).
RETRIED_COPY = {amqp.ATTEMPT_HEADER, amqp.LAST_ERROR_HEADER, amqp.REPLAYS_HEADER}
PARKED_COPY = {
    amqp.ATTEMPT_HEADER,
    amqp.DEAD_REASON_HEADER,
    amqp.PARKED_ID_HEADER,
    amqp.REPLAYS_HEADER,
}
M = TypeVar("M", bound=BaseModel)
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}

FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`]+)`")
TABLE = re.compile(r"(?:^[ \t]*\|.*\|[ \t]*\n)+", re.MULTILINE)
#: A queue name of the worked example, as the page writes it.
EXAMPLE_QUEUE = re.compile(rf"`({re.escape(NS)}\.[A-Za-z0-9_.:-]+)`")
#: A queue name with placeholders, as the tables and their introductions write it.
QUEUE_PATTERN = re.compile(r"`(\{ns\}\.[A-Za-z0-9_.{}-]+)`")
#: An argument table's value: `literal`, or `literal` + `literal` (a sum).
VALUE = re.compile(r"^`([^`]+)`(?:\s*\+\s*`([^`]+)`)?")


# ---------------------------------------------------------------- reading the page


@dataclass(frozen=True)
class Table:
    start: int  # where the table begins in the page
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Found:
    """A JSON object of the page: in a ```json block, or an inline code span."""

    start: int
    end: int
    value: dict[str, Any]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def tables() -> list[Table]:
    found = []
    for match in TABLE.finditer(PAGE):
        lines = match.group(0).splitlines()
        found.append(Table(match.start(), _cells(lines[0]), [_cells(ln) for ln in lines[2:]]))
    return found


def _outside_fences() -> str:
    """The page with its fenced blocks blanked out (same length: offsets stay valid)."""
    return FENCED.sub(lambda block: " " * len(block.group(0)), PAGE)


def json_objects() -> list[Found]:
    """Every JSON object the page shows, in page order (a code span may run over lines)."""
    found = [
        Found(block.start(), block.end(), json.loads(block.group(2)))
        for block in FENCED.finditer(PAGE)
        if block.group(1) == "json"
    ]
    for span in CODE_SPAN.finditer(_outside_fences()):
        code = " ".join(span.group(1).split())
        if code.startswith('{"'):
            found.append(Found(span.start(), span.end(), json.loads(code)))
    return sorted(found, key=lambda f: f.start)


def shell_bodies() -> list[dict[str, Any]]:
    """The bodies of the `curl -d '…'` calls in the page's ```sh blocks."""
    return [
        json.loads(body)
        for block in FENCED.finditer(PAGE)
        if block.group(1) == "sh"
        for body in re.findall(r"-d '(\{.*?\})'", block.group(2), re.DOTALL)
    ]


def fill(text: str, ms: int) -> str:
    """A table's text with the placeholders put in."""
    return text.replace("{ns}", NS).replace("{pool}", POOL).replace("{ms}", str(ms))


def expected_arguments(queue: str) -> dict[str, Any]:
    """What shared/topology.py declares `queue` with."""
    role = TOPO.classify(queue)
    assert role is not None, f"{queue} is not a queue of namespace {NS}"
    if role.kind in ("parked", "tracker_parked"):
        return TOPO.parked_queue_arguments()
    if role.kind == "tracker":
        return TOPO.tracker_queue_arguments()
    if role.kind == "high":
        assert role.pool is not None
        return TOPO.high_queue_arguments(role.pool)
    if role.kind == "high_delay":
        assert role.pool is not None and role.delay_ms is not None
        return TOPO.delay_queue_arguments(role.pool, role.delay_ms, "high")
    assert role.pool is not None
    if role.kind == "delay":
        assert role.delay_ms is not None
        return TOPO.delay_queue_arguments(role.pool, role.delay_ms)
    return TOPO.pool_queue_arguments(role.pool)


def table_arguments(table: Table, ms: int) -> dict[str, Any]:
    """An argument table as the arguments it says, placeholders put in."""
    arguments: dict[str, Any] = {}
    for name, cell in table.rows:
        match = VALUE.match(cell)
        assert match, f"argument {name}: cannot read the value {cell!r}"
        terms = [json.loads(fill(term, ms)) for term in match.groups() if term is not None]
        value = terms[0] if len(terms) == 1 else sum(terms)
        if isinstance(value, bool):
            assert "(boolean)" in cell, f"{name}: say (boolean) of {cell!r}"
        elif isinstance(value, int):
            assert "(integer)" in cell, f"{name}: say (integer) of {cell!r}"
        arguments[name.strip("`")] = value
    return arguments


def introduction(start: int) -> str:
    """The paragraph right before the page offset `start`."""
    end = len(PAGE[:start].rstrip())
    return PAGE[PAGE.rindex("\n\n", 0, end) : end]


def argument_tables() -> dict[str, Table]:
    """Each argument table by the queue names its introduction gives (with placeholders)."""
    found = {}
    for table in tables():
        if table.header == ["argument", "value"]:
            names = QUEUE_PATTERN.findall(introduction(table.start))
            assert names, f"no queue named before the table at {table.rows[0]}"
            found.update(dict.fromkeys(names, table))
    return found


def queue_named(text: str) -> str:
    """The last queue of the example's namespace that `text` names (not an exchange)."""
    names: list[str] = [
        name for name in EXAMPLE_QUEUE.findall(text) if TOPO.classify(name) is not None
    ]
    assert names, f"no queue named in {text!r}"
    return names[-1]


def keys_of(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def validated(model: type[M], body: dict[str, Any]) -> M:
    """`body` as `model`, with no field the model would ignore (a misspelt one)."""
    assert set(body) <= keys_of(model), f"{model.__name__} has no {set(body) - keys_of(model)}"
    return model.model_validate(body)


# ---------------------------------------------------------------- the queue arguments


def test_the_argument_tables_list_what_the_topology_declares() -> None:
    found = argument_tables()
    kinds = set()
    for pattern, table in found.items():
        for ms in (10, 1000, 16_000):  # a literal where `{ms}` belongs would differ
            queue = fill(pattern, ms)
            assert table_arguments(table, ms) == expected_arguments(queue), queue
            role = TOPO.classify(queue)
            assert role is not None
            kinds.add(role.kind)
    assert kinds == {"pool", "parked", "tracker_parked", "delay"}


def test_the_tracker_queue_is_the_pool_queue_with_its_own_key_and_one_more() -> None:
    words = " ".join(PAGE.split())
    match = re.search(
        r"The tracker queue `\{ns\}\.tracker` has the same (\w+), with `([\w-]+)` `([^`]+)`, "
        r"plus `([\w-]+)` `([^`]+)` \(boolean\)",
        words,
    )
    assert match, "the sentence on the tracker queue's arguments is gone or reworded"
    count, key, value, extra, extra_value = match.groups()
    pool_arguments = table_arguments(argument_tables()["{ns}.pool.{pool}"], 1000)
    assert NUMBERS[count] == len(pool_arguments)
    said = {**pool_arguments, key: json.loads(fill(value, 1000)), extra: json.loads(extra_value)}
    assert said == TOPO.tracker_queue_arguments()


def test_the_counts_of_arguments_the_text_names_are_right() -> None:
    words = " ".join(PAGE.split())
    pool = len(TOPO.pool_queue_arguments(POOL))
    parked = len(TOPO.parked_queue_arguments())
    delay = len(TOPO.delay_queue_arguments(POOL, 1000))
    for pattern, count in [
        (r"\(durable, the (\w+) arguments\)", pool),
        (r"\(durable, the (\w+) arguments of a parked queue\)", parked),
        (r"A parked queue \([^)]*\) has (\w+):", parked),
        (r"with exactly the (\w+) arguments above", delay),
    ]:
        said = re.findall(pattern, words)
        assert said, f"no text matches {pattern!r}"
        assert {NUMBERS[word] for word in said} == {count}, pattern


def test_every_queue_argument_object_in_the_page_is_what_the_topology_declares() -> None:
    kinds = set()
    before = 0
    for found in json_objects():
        if "x-queue-type" in found.value:
            queue = queue_named(PAGE[before : found.start])
            assert found.value == expected_arguments(queue), queue
            role = TOPO.classify(queue)
            assert role is not None
            kinds.add(role.kind)
        before = found.end
    assert kinds == {"pool", "parked", "delay"}


def test_the_constants_appear_with_their_values() -> None:
    words = " ".join(PAGE.split())
    for value in (DELIVERY_LIMIT, PARKED_DELIVERY_LIMIT, DELAY_QUEUE_IDLE_MS):
        assert str(value) in PAGE
    assert set(re.findall(r"`x-delivery-limit` = (\d+)", words)) == {str(DELIVERY_LIMIT)}
    assert set(re.findall(r"`x-expires` = `ms` \+ (\d+)", words)) == {str(DELAY_QUEUE_IDLE_MS)}
    minutes = DELAY_QUEUE_IDLE_MS // 60_000
    spelt = {5: "five", 10: "ten", 15: "fifteen", 30: "thirty", 60: "sixty"}[minutes]
    assert f"unused for {spelt} minutes longer than its delay" in words


# ---------------------------------------------------------------- names and bindings


def test_the_exchanges_and_bindings_match_the_topology() -> None:
    by_header = {tuple(table.header): table for table in tables()}
    exchanges = by_header[("exchange", "type", "routing key of what is published to it")]
    said = {fill(row[0].strip("`"), 1000): row[1] for row in exchanges.rows}
    assert said == {**dict.fromkeys(TOPO.names([])[0], "topic"), TOPO.committed_exchange: "fanout"}

    pool_queue = TOPO.pool_queue(POOL)
    expected = {
        "pool": ({TOPO.tasks_exchange}, {TOPO.task_routing_key(POOL)}),
        "parked": ({TOPO.dead_exchange}, {TOPO.parked_queue(pool_queue)}),
        "delay": (set(), set()),
        "tracker": (
            {
                TOPO.tasks_exchange,
                TOPO.high_tasks_exchange,
                TOPO.events_exchange,
                TOPO.dead_exchange,
            },
            {"#", TOPO.parked_pools_pattern},
        ),
        "high": ({TOPO.high_tasks_exchange}, {TOPO.task_routing_key(POOL)}),
        "high_delay": (set(), set()),
        "tracker_parked": ({TOPO.dead_exchange}, {TOPO.parked_queue(TOPO.tracker_queue)}),
        "control": ({TOPO.events_exchange}, set(CONTROL_EVENTS)),
        "notices": ({TOPO.committed_exchange}, set()),
    }
    queues = by_header[("queue", "bound to", "binding key")]
    kinds = []
    for queue, bound_to, keys in queues.rows:
        role = TOPO.classify(fill(queue.strip("`"), 1000))
        assert role is not None, queue
        kinds.append(role.kind)
        exchanges_said = {fill(name, 1000) for name in CODE_SPAN.findall(bound_to)}
        keys_said = {fill(key, 1000) for key in CODE_SPAN.findall(keys)}
        assert (exchanges_said, keys_said) == expected[role.kind], queue
    assert sorted(kinds) == sorted(expected)


# ---------------------------------------------------------------- headers


def header_tables(*columns: str) -> list[set[str]]:
    """The header names of each table with these columns (the first one is `header`)."""
    return [
        {row[0].strip("`") for row in table.rows}
        for table in tables()
        if table.header == ["header", *columns]
    ]


def test_every_header_the_page_names_is_a_header_of_the_bus_and_back() -> None:
    (on_a_task,) = header_tables("on", "value")
    assert on_a_task == HEADERS  # the table of a task's headers documents every one
    for names in header_tables("value"):
        assert names <= HEADERS, f"not in shared/amqp.py: {names - HEADERS}"


def test_the_steps_name_the_headers_of_a_retried_and_a_parked_copy() -> None:
    assert header_tables("value") == [RETRIED_COPY, PARKED_COPY]  # retry, then park


def test_the_example_headers_are_those_of_the_steps() -> None:
    examples = [
        found.value for found in json_objects() if all(key.startswith("x-") for key in found.value)
    ]
    headers = [value for value in examples if "x-queue-type" not in value]
    assert [set(h) for h in headers if amqp.LAST_ERROR_HEADER in h] == [RETRIED_COPY]
    assert [set(h) for h in headers if amqp.DEAD_REASON_HEADER in h] == [PARKED_COPY]
    for value in headers:
        for name in (amqp.ATTEMPT_HEADER, amqp.REPLAYS_HEADER):
            assert type(value[name]) is int, f"{name} is an integer: {value}"


# ---------------------------------------------------------------- the worked example's bodies


def test_the_worked_example_bodies_are_valid_and_agree() -> None:
    send: SendRequest | None = None
    task: TaskMessage | None = None
    events: dict[str, Event] = {}
    retried: dict[str, Any] = {}
    delay_ms: int | None = None
    before = 0
    for found in json_objects():
        body = found.value
        if "x-queue-type" in body:
            role = TOPO.classify(queue_named(PAGE[before : found.start]))
            if role is not None and role.kind == "delay":
                delay_ms = role.delay_ms
        elif amqp.LAST_ERROR_HEADER in body:
            retried = body
        elif "event" in body:
            event = validated(Event, body)
            events[event.event] = event
        elif "task_id" in body and "created_at" in body:
            task = validated(TaskMessage, body)
        elif "from" in body and "to" in body:
            send = validated(SendRequest, body)
        before = found.end
    assert send is not None and task is not None and delay_ms is not None
    assert set(events) == {"processing", "retry"}
    processing, retry = events["processing"], events["retry"]

    # What the child receives is what the master sent, with an id and a time.
    sent = send.model_dump(exclude_none=True, exclude={"task_id"})
    assert task.model_dump(include=set(sent)) == sent
    for event in (processing, retry):
        assert event.task_id == task.task_id
        assert event.conversation_id == task.conversation_id
    assert processing.attempt == retry.attempt == 1

    # The retry: its copy's headers, its delay queue and its `next_at` tell one story.
    assert retried[amqp.ATTEMPT_HEADER] == retry.attempt + 1
    assert retried[amqp.LAST_ERROR_HEADER] == retry.error
    assert delay_ms == RetryPolicy().delay_ms(retry.attempt)
    assert retry.next_at is not None
    assert (retry.next_at - retry.ts).total_seconds() * 1000 == delay_ms

    (callback,) = shell_bodies()
    assert validated(CallbackRequest, callback).task_id == task.task_id


def test_the_task_status_answer_names_its_field() -> None:
    answers = [
        json.loads(match)
        for span in CODE_SPAN.findall(_outside_fences())
        for match in re.findall(r"^200 (\{.*\})$", " ".join(span.split()))
    ]
    with_state = [answer for answer in answers if "task_status" in answer]
    assert with_state, "the page shows no answer of task-status"
    for answer in with_state:
        assert validated(TaskStatusResponse, answer).task_status == "completed"
