"""The dashboard at /ui in a real browser: Debian's chromium, headless, driven by Playwright,
against the real bus (a private RabbitMQ node with its management API, so the overview has its
queue depths; PostgreSQL). One bus and one browser for the module; a fresh browser context
(fresh sessionStorage: signed out) per test.

Each test writes screenshots of the pages it saw to build/screenshots/ (or
$CONVBUS_SCREENSHOTS); the best of them are in docs/img/.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect, sync_playwright

from services.api.ui import CONTENT_SECURITY_POLICY
from tests.conftest import _pg_database
from tests.support.api import AUTH, record, send_task
from tests.support.bus import API_KEY, TESTS, Bus, Namespace, migrated, running, wait_for
from tests.support.servers import PrivateRabbit

CHROMIUM = os.environ.get("CONVBUS_CHROMIUM", "/usr/bin/chromium")
#: As root, without a sandbox; no background traffic (this machine's network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(os.environ.get("CONVBUS_SCREENSHOTS", TESTS.parent / "build" / "screenshots"))
READ_KEY = "read-" + uuid.uuid4().hex
SEND_KEY = "send-" + uuid.uuid4().hex
KEYS = [("watcher", READ_KEY, ["read"]), ("master", SEND_KEY, ["send"])]
#: Long enough to see a task's row before it ends, short enough not to idle.
NAP_S = 2.5


def _keys_json() -> str:
    return json.dumps(
        [{"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": scopes}
         for name, key, scopes in KEYS]
    )  # fmt: skip


@pytest.fixture(scope="module")
def ui_bus(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str) -> Iterator[Bus]:
    workdir = tmp_path_factory.mktemp("dashboard")
    node = PrivateRabbit.create(management=True)
    node.start()
    try:
        with contextlib.closing(_pg_database(pg_admin_url)) as databases:
            database_url = migrated(next(databases))
            namespace = Namespace(name=f"d{uuid.uuid4().hex[:10]}", amqp_url=node.url)
            bus = Bus(namespace=namespace, database_url=database_url, workdir=workdir)
            with running(bus):
                bus.start_all(RELAY_MANAGEMENT_URL=node.management_url, RELAY_KEYS=_keys_json())
                yield bus
    finally:
        node.stop()


#: The dashboard's check whether a failed task is parked, which answers 404 when it is not.
NOT_PARKED = re.compile(r"/api/relay/dlq/[^/?]+$")

#: A slow machine's worst page change, not a time anything should take.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    playwright: Playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()
    finally:
        playwright.stop()


class Watched:
    """A page, with what the browser reported while the test ran: console errors (a Content
    Security Policy violation is one), uncaught exceptions, and every URL it requested."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.error_urls: list[str] = []  # the resource a failed load names, beside its error
        self.urls: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self._error(f"page error: {exc}", ""))
        page.on("request", lambda request: self.urls.append(request.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self._error(message.text, message.location.get("url", ""))

    def _error(self, text: str, url: str) -> None:
        self.errors.append(text)
        self.error_urls.append(url)


@pytest.fixture
def ui(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(20_000)
    watched = Watched(context.new_page())
    try:
        yield watched
    finally:
        context.close()
    # The browser logs a refused request (a 401 or 403 the test provoked) as an error too, and
    # the 404 that answers "not parked" to a failed task's check (`GET /dlq/ID`; in the moment
    # after a replay, before the tracker records it, the task still reads failed): only other
    # errors count.
    refused = ("status of 401", "status of 403")
    unexpected = [
        f"{error} ({url})"
        for error, url in zip(watched.errors, watched.error_urls, strict=True)
        if not any(r in error for r in refused)
        and not ("status of 404" in error and NOT_PARKED.search(url))
    ]
    assert not unexpected, unexpected


def sign_in(ui: Watched, bus: Bus, key: str = API_KEY) -> Page:
    page = ui.page
    page.goto(f"{bus.api}/ui")
    page.fill("#api-key", key)
    page.click("form.sign-in button[type=submit]")
    expect(page.locator("#nav")).to_be_visible()
    return page


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def state_of(page: Page, task_id: str) -> Any:
    return expect(page.locator(f'tr[data-task-id="{task_id}"] .badge'))


def test_a_sent_task_appears_and_completes_live_with_its_timeline(ui_bus: Bus, ui: Watched) -> None:
    page = sign_in(ui, ui_bus)
    shoot(page, "overview-empty")
    page.click("nav a[data-view=tasks]")
    expect(page.locator("#tasks")).to_be_visible()
    page.evaluate("window.notReloaded = true")
    task_id = send_task(ui_bus, "nap", payload={"seconds": NAP_S}, conversation_id="conv-ui")

    row = page.locator(f'tr[data-task-id="{task_id}"]')
    expect(row).to_be_visible()
    first_seen = row.locator(".badge").get_attribute("data-state")
    state_of(page, task_id).to_have_attribute("data-state", "completed")
    assert first_seen in ("pending", "processing"), first_seen
    assert page.evaluate("window.notReloaded") is True

    # Pages: two tasks a page, older and back to the newest.
    older = send_task(ui_bus, "nap", payload={"seconds": 0}, conversation_id="conv-ui")
    newer = send_task(ui_bus, "nap", payload={"seconds": 0}, conversation_id="conv-ui")
    for sent in (older, newer):
        wait_for(lambda t=sent: record(ui_bus, t)["task_status"] == "completed", what="a task")
    page.goto(f"{ui_bus.api}/ui#/tasks?conversation_id=conv-ui&limit=2")
    rows = page.locator("#tasks tbody tr[data-task-id]")
    expect(rows.first).to_have_attribute("data-task-id", newer)
    expect(rows.nth(1)).to_have_attribute("data-task-id", older)
    expect(rows).to_have_count(2)
    page.click("#older")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-task-id", task_id)
    expect(page.locator("#older")).to_have_count(0)
    page.click("#newest")
    expect(rows.first).to_have_attribute("data-task-id", newer)
    page.goto(f"{ui_bus.api}/ui#/tasks?conversation_id=conv-ui")

    row.locator("a").first.click()
    timeline = page.locator("#timeline li")
    expect(timeline.first).to_be_visible()
    assert timeline.evaluate_all("els => els.map(e => e.dataset.event)") == [
        "send", "processing", "callback",
    ]  # fmt: skip
    expect(page.locator("#result")).to_contain_text('"napped": true')
    expect(page.locator("#payload")).to_contain_text(f'"seconds": {NAP_S}')
    expect(page.locator("#cancel")).to_be_disabled()  # it ended
    shoot(page, "task")

    page.click("dl.facts a")  # its conversation
    expect(page.locator(".thread li").first).to_be_visible()
    shoot(page, "conversation")

    page.click("nav a[data-view=overview]")
    pool = page.locator('#pools tr[data-pool="child"]')
    expect(pool).to_be_visible()
    # The queue depths come from the management API: the child's consumer is counted (once
    # RabbitMQ's statistics, every 0.5 s on this node, have it).
    expect(pool.locator("td").nth(3)).to_have_text(re.compile(r"^[1-9]"))
    expect(page.locator("#tracker")).to_contain_text("consumer")


def test_a_failing_task_shows_its_retries_parks_and_replays_to_completed(
    ui_bus: Bus, ui: Watched, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    # Fails three runs (the first and its two retries), so it is parked; the replay's run works.
    task_id = send_task(ui_bus, "flaky", payload={"fail_times": 3, "counter": str(counter)})
    page = sign_in(ui, ui_bus)
    page.goto(f"{ui_bus.api}/ui#/task/{task_id}")
    expect(page.locator("h1 .badge")).to_have_attribute("data-state", "failed")
    retries = page.locator('#timeline li[data-event="retry"]')
    expect(retries).to_have_count(2)
    expect(retries.first).to_contain_text("flaky failure 1")
    expect(page.locator('#timeline li[data-event="dead"]')).to_have_count(1)
    expect(page.locator("#task-error")).to_contain_text("flaky failure 3")
    shoot(page, "task-failed")

    page.click("nav a[data-view=parked]")
    parked = page.locator(f'#parked tr[data-task-id="{task_id}"]')
    expect(parked).to_be_visible()
    parked.get_by_role("button", name="Inspect").click()
    expect(page.locator("#parked .parked-body:visible")).to_contain_text(str(counter))
    shoot(page, "parked")

    page.goto(f"{ui_bus.api}/ui#/task/{task_id}")
    expect(page.locator("#replay")).to_be_enabled()
    page.click("#replay")
    expect(page.locator("h1 .badge")).to_have_attribute("data-state", "completed")
    expect(page.locator('#timeline li[data-event="replay"]')).to_have_count(1)
    assert counter.read_text() == "4"


def test_purging_the_parking_lot_asks_first(ui_bus: Bus, ui: Watched) -> None:
    task_id = send_task(ui_bus, "boom", payload={"why": "to be purged"})
    wait_for(lambda: record(ui_bus, task_id)["task_status"] == "failed", what="the task to fail")
    page = sign_in(ui, ui_bus)
    page.click("nav a[data-view=parked]")
    expect(page.locator(f'#parked tr[data-task-id="{task_id}"]')).to_be_visible()
    page.click("#purge")
    confirm = page.locator(".confirm")
    expect(confirm).to_contain_text("for good")
    confirm.get_by_role("button", name="Cancel").click()
    expect(page.locator(f'#parked tr[data-task-id="{task_id}"]')).to_be_visible()  # still there
    page.click("#purge")
    page.get_by_role("button", name="Yes, purge").click()
    expect(page.locator("#notice")).to_contain_text("Purged")
    expect(page.locator(f'#parked tr[data-task-id="{task_id}"]')).to_have_count(0)
    gone = httpx.get(f"{ui_bus.api}/api/relay/dlq/{task_id}", headers=AUTH, timeout=5)
    assert gone.status_code == 404


MARKUP = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def test_markup_in_a_task_renders_as_text_and_runs_nothing(ui_bus: Bus, ui: Watched) -> None:
    task_id = send_task(
        ui_bus,
        "nap",
        payload={"seconds": 0, "html": MARKUP},
        text=f"<b>bold?</b>{MARKUP}",
        conversation_id="conv-markup",
    )
    wait_for(lambda: record(ui_bus, task_id)["task_status"] == "completed", what="the task")
    page = sign_in(ui, ui_bus)
    page.goto(f"{ui_bus.api}/ui#/task/{task_id}")
    response = page.reload()  # the page as served (a change of fragment loads nothing)
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY and "unsafe-inline" not in policy
    expect(page.locator("#payload")).to_contain_text("<script>window.pwned=2</script>")
    page.goto(f"{ui_bus.api}/ui#/conversation/conv-markup")
    expect(page.locator(".thread .said").first).to_contain_text("<b>bold?</b>")
    page.goto(f"{ui_bus.api}/ui#/tasks?conversation_id=conv-markup")
    expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_be_visible()
    for view in ("task", "conversation"):
        page.goto(f"{ui_bus.api}/ui#/{view}/{task_id if view == 'task' else 'conv-markup'}")
        expect(page.locator("main pre").first).to_be_visible()
        assert page.locator("main img, main script, main b").count() == 0
    assert page.evaluate("window.pwned") is None


def test_a_read_only_key_sees_actions_disabled_and_is_refused_anyway(
    ui_bus: Bus, ui: Watched
) -> None:
    task_id = send_task(ui_bus, "boom", payload={"why": "for the read-only key"})
    wait_for(lambda: record(ui_bus, task_id)["task_status"] == "failed", what="the task to fail")
    page = sign_in(ui, ui_bus, READ_KEY)
    expect(page.locator("#who-name")).to_have_text("watcher (read)")
    page.goto(f"{ui_bus.api}/ui#/task/{task_id}")
    expect(page.locator("h1 .badge")).to_have_attribute("data-state", "failed")
    expect(page.locator("#replay")).to_be_disabled()
    expect(page.locator("#replay")).to_have_attribute("title", "needs the admin scope")
    page.click("nav a[data-view=parked]")
    expect(page.get_by_role("button", name="Purge")).to_be_disabled()
    expect(page.get_by_role("button", name="Replay all")).to_be_disabled()

    # A request forged in the page with the key (as the button would send it) is refused.
    forged = page.evaluate(
        """async ([taskId, key]) => {
            const r = await fetch(`/api/relay/dlq/${taskId}/replay`,
                                  {method: "POST", headers: {"X-Relay-API-Key": key}});
            return r.status;
        }""",
        [task_id, READ_KEY],
    )
    assert forged == 403
    still = httpx.get(f"{ui_bus.api}/api/relay/dlq/{task_id}", headers=AUTH, timeout=5)
    assert still.status_code == 200  # still parked
    assert record(ui_bus, task_id)["task_status"] == "failed"

    # The pictures of docs/img: by now the module's tasks have run, failed, parked, replayed.
    page.click("nav a[data-view=overview]")
    expect(page.locator("#overview table.grid").nth(1)).to_contain_text("boom")
    shoot(page, "overview")
    page.click("nav a[data-view=tasks]")
    expect(page.locator("#tasks tbody tr[data-task-id]").nth(4)).to_be_visible()
    shoot(page, "tasks")

    # The key went as a header only: in no URL the page asked for, nor in any process's log.
    assert ui.urls and not [url for url in ui.urls if READ_KEY in url]
    for log in ui_bus.workdir.glob("*.log"):
        assert READ_KEY not in log.read_text(errors="replace"), log


def test_sign_in_refuses_an_unknown_key_and_one_without_the_read_scope(
    ui_bus: Bus, ui: Watched
) -> None:
    page = ui.page
    page.goto(f"{ui_bus.api}/ui")
    shoot(page, "sign-in")
    page.fill("#api-key", "not-a-key")
    page.click("form.sign-in button[type=submit]")
    expect(page.locator(".form-error")).to_contain_text("not one the bus knows")
    page.fill("#api-key", SEND_KEY)
    page.click("form.sign-in button[type=submit]")
    expect(page.locator(".form-error")).to_contain_text("lacks the read scope")
    expect(page.locator("#nav")).to_be_hidden()
    # The API refuses that key the dashboard's reads, whatever a page would do.
    refused = httpx.get(
        f"{ui_bus.api}/api/relay/tasks", headers={"X-Relay-API-Key": SEND_KEY}, timeout=5
    )
    assert refused.status_code == 403
