// The dashboard: one page, its views in the URL's fragment (#/overview, #/tasks?…, #/task/ID,
// #/conversation/ID, #/parked). It reads the bus's JSON API with the key the operator signed
// in with, sent as the API's usual header; the key lives in this tab's sessionStorage, never
// in a URL. Every value from the bus is put on the page as text (el(), textContent), never as
// markup: a payload holding <script> shows as those characters.

const API = "/api/relay";
const KEY_HEADER = "X-Relay-API-Key";
const STORE = "convbus.dashboard";
const FINAL = new Set(["completed", "failed", "expired", "canceled"]);
const STATES = ["scheduled", "pending", "processing", "retrying", "input_required",
  "completed", "failed", "expired", "canceled"];
const OVERVIEW_EVERY_MS = 3000;
// A burst of bus events refreshes a view at most this often.
const REFRESH_GAP_MS = 400;

// ---- the session ------------------------------------------------------------------------

let session = loadSession();

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE) || "null");
  } catch {
    return null;
  }
}

function saveSession(value) {
  session = value;
  if (value === null) sessionStorage.removeItem(STORE);
  else sessionStorage.setItem(STORE, JSON.stringify(value));
}

function can(...scopes) {
  return session !== null && scopes.some((s) => session.me.scopes.includes(s));
}

// ---- talking to the API -----------------------------------------------------------------

class Refused extends Error {
  constructor(status, msg) {
    super(msg);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, signal, key } = {}) {
  const headers = { [KEY_HEADER]: key ?? session?.key ?? "", Accept: "application/json" };
  const init = { method, headers, signal, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const msg = (data && typeof data.msg === "string" && data.msg) || response.statusText;
    if (response.status === 401 && key === undefined) signOut("The key was refused: sign in again.");
    throw new Refused(response.status, msg);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") q.set(name, value);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

// Server-Sent Events over fetch (an EventSource cannot send the key's header): calls `onEntry`
// with each log entry passing `filters`, resumes after a drop from the last id seen, until
// `signal` aborts. `onOpen` runs each time the stream is open: a view reads itself again then,
// so that nothing committed before the stream began (or while it was down) is missed.
async function follow(filters, onEntry, signal, onOpen) {
  let lastId = null;
  let pause = 500;
  while (!signal.aborted) {
    try {
      const headers = { [KEY_HEADER]: session.key, Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const response = await fetch(API + "/stream" + query(filters), {
        headers, signal, cache: "no-store", credentials: "omit",
      });
      if (response.status === 401) return signOut("The key was refused: sign in again.");
      if (!response.ok || response.body === null) throw new Error(`stream ${response.status}`);
      pause = 500;
      onOpen();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let data = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) lastId = line.slice(3).trim();
            else if (line.startsWith("data:")) data = (data ?? "") + line.slice(5).trim();
          }
          if (data !== null) onEntry(JSON.parse(data));
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 10000);
  }
}

// ---- building the page (text only) ------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(ts) {
  if (!ts) return "";
  const date = new Date(ts);
  return Number.isNaN(date.getTime()) ? String(ts) : date.toISOString().replace("T", " ").slice(0, 19);
}

function ago(ts) {
  const seconds = Math.round((Date.now() - new Date(ts).getTime()) / 1000);
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return `${Math.max(seconds, 0)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function seconds(from, to) {
  return Math.max((new Date(to).getTime() - new Date(from).getTime()) / 1000, 0).toFixed(1);
}

function json(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function badge(state) {
  return el("span", { class: `badge state-${state}`, "data-state": state }, state);
}

function taskLink(id) {
  return el("a", { href: `#/task/${encodeURIComponent(id)}`, class: "mono" }, id);
}

function conversationLink(id) {
  return el("a", { href: `#/conversation/${encodeURIComponent(id)}`, class: "mono" }, id);
}

function notice(text, kind = "error") {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = `notice ${kind}`;
  box.hidden = !text;
}

function failure(error) {
  return error instanceof Refused ? `${error.status}: ${error.message}` : String(error.message || error);
}

// A button whose action needs one of `scopes`: disabled (and saying why) for a key without.
function action(label, scopes, onclick, attrs = {}) {
  const allowed = can(...scopes);
  return el("button", {
    type: "button",
    ...attrs,
    disabled: !allowed || attrs.disabled,
    title: allowed ? attrs.title : `needs the ${scopes.join(" or ")} scope`,
    onclick,
  }, label);
}

// Asks before a bulk or destructive action: a bar with the question, Yes and Cancel.
function confirmBar(question, yesLabel, onYes) {
  const bar = el("div", { class: "confirm", role: "alertdialog" });
  const close = () => bar.remove();
  bar.append(
    el("span", {}, question),
    el("button", { type: "button", class: "danger", onclick: async () => { close(); await onYes(); } }, yesLabel),
    el("button", { type: "button", onclick: close }, "Cancel"),
  );
  return bar;
}

// ---- views ------------------------------------------------------------------------------

// The view on screen: its AbortController stops its stream and timers when another replaces it.
let current = null;

function show(...nodes) {
  document.getElementById("main").replaceChildren(...nodes);
}

// Runs `read` one at a time: a call while one runs makes one more run after it (reading what the
// bus has then), so an older answer never paints over a newer one.
function serial(read) {
  let running = null;
  let again = false;
  return async () => {
    if (running !== null) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await read();
      } while (again);
    })();
    try {
      await running;
    } finally {
      running = null;
    }
  };
}

// Calls `refresh` soon after bus events, at most once every REFRESH_GAP_MS.
function debounced(refresh) {
  let timer = null;
  return () => {
    if (timer === null) timer = setTimeout(() => { timer = null; refresh(); }, REFRESH_GAP_MS);
  };
}

function signInView(message) {
  const input = el("input", {
    id: "api-key", type: "password", autocomplete: "off", required: true,
    placeholder: "API key", "aria-label": "API key",
  });
  const error = el("p", { class: "form-error", role: "alert" }, message || "");
  const form = el("form", { class: "sign-in" },
    el("h1", {}, "Sign in"),
    el("p", {}, "With an API key that has the read or admin scope. It stays in this tab only."),
    input,
    el("button", { type: "submit" }, "Sign in"),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    try {
      const me = await api("/me", { key });
      if (!me.scopes.includes("read") && !me.scopes.includes("admin")) {
        error.textContent = `The key of ${me.name} lacks the read scope: the dashboard needs read or admin.`;
        return;
      }
      saveSession({ key, me: { name: me.name, scopes: me.scopes } });
      // A link to a task or a page opened before signing in leads there now.
      if (!location.hash || location.hash.startsWith("#/signin")) location.hash = "#/overview";
      route();
    } catch (failed) {
      error.textContent = failed instanceof Refused && failed.status === 401
        ? "That key is not one the bus knows." : failure(failed);
    }
  });
  show(form);
  input.focus();
}

function signOut(message) {
  saveSession(null);
  if (current) current.abort();
  location.hash = "#/signin";
  renderChrome();
  signInView(message);
}

async function overviewView(signal) {
  const body = el("div", { id: "overview" }, el("p", { class: "muted" }, "Loading…"));
  show(el("h1", {}, "Overview"), body);
  const tick = async () => {
    if (signal.aborted) return;
    try {
      const o = await api("/overview", { signal });
      body.replaceChildren(...renderOverview(o));
      notice("");
    } catch (error) {
      if (!signal.aborted) notice(`Overview not read: ${failure(error)}`);
    }
    if (!signal.aborted) setTimeout(tick, OVERVIEW_EVERY_MS);
  };
  await tick();
}

function renderOverview(o) {
  const cell = (value) => el("td", { class: "num" }, value ?? "–");
  const rows = o.pools.map((p) => el("tr", { "data-pool": p.pool },
    el("td", {}, el("a", { href: `#/tasks?pool=${encodeURIComponent(p.pool)}` }, p.pool)),
    cell(p.queues?.ready), cell(p.queues?.unacked), cell(p.queues?.consumers),
    cell((p.sent_last_minute / 60).toFixed(2)), cell((p.ended_last_minute / 60).toFixed(2)),
    cell(p.queues?.retrying),
    el("td", { class: "num" }, p.queues && p.queues.parked > 0
      ? el("a", { href: "#/parked", class: "warn" }, p.queues.parked) : (p.queues?.parked ?? "–")),
    el("td", { class: p.failed_last_minute > 0 ? "num warn" : "num" }, p.failed_last_minute)));
  const tracker = o.tracker
    ? `Tracker: ${o.tracker.lag} not yet recorded, ${o.tracker.consumers} consumer(s), ${o.tracker.parked} parked`
    : "Tracker: –";
  const states = Object.entries(o.unfinished).map(([state, n]) => el("li", {},
    el("a", { href: `#/tasks?state=${state}` }, badge(state)), ` ${n}`));
  const failures = o.recent_failures.length === 0
    ? el("p", { class: "muted" }, "No task has failed.")
    : el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, ["Failed", "Task", "Pool", "Command", "Attempts", "Error"].map((h) => el("th", {}, h)))),
      el("tbody", {}, o.recent_failures.map((f) => el("tr", {},
        el("td", {}, when(f.completed_at)), el("td", {}, taskLink(f.task_id)), el("td", {}, f.to ?? ""),
        el("td", {}, f.cmd ?? ""), el("td", { class: "num" }, f.attempts), el("td", { class: "error" }, f.error ?? "")))));
  return [
    o.queues_error ? el("p", { class: "notice warning" }, o.queues_error) : null,
    el("table", { class: "grid", id: "pools" },
      el("thead", {}, el("tr", {}, ["Pool", "Ready", "Unacked", "Consumers", "In /s", "Out /s",
        "Retrying", "Parked", "Failed (1 min)"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No pool yet.")))),
    el("p", { class: "muted", id: "tracker" }, tracker, ` · measured ${when(o.measured_at)} UTC`),
    el("h2", {}, "Unfinished tasks"), el("ul", { class: "states" }, states),
    el("h2", {}, "Recent failures"), failures,
  ].filter(Boolean);
}

const TASK_FILTERS = ["state", "pool", "from", "cmd", "conversation_id", "since", "before"];

async function tasksView(signal, params) {
  const filters = Object.fromEntries(TASK_FILTERS.map((f) => [f, params.get(f) || ""]));
  const limit = params.get("limit") || "";
  // Where this page starts (an older page's), apart from the filters.
  const page = { before: params.get("page_before") || "", before_id: params.get("page_before_id") || "" };
  const input = (name, attrs = {}) => el("label", {}, name.replace("_id", ""),
    el("input", { name, value: filters[name], ...attrs }));
  const stateSelect = el("select", { name: "state" }, el("option", { value: "" }, "any state"),
    STATES.map((s) => el("option", { value: s, selected: filters.state === s }, s)));
  const form = el("form", { class: "filters", id: "task-filters" },
    el("label", {}, "state", stateSelect), input("pool"), input("from"), input("cmd"),
    input("conversation_id"),
    input("since", { placeholder: "2026-12-04T09:00:00Z" }), input("before", { placeholder: "2026-12-04T10:00:00Z" }),
    el("button", { type: "submit" }, "Filter"),
    el("a", { href: "#/tasks", class: "button-like" }, "Clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = Object.fromEntries(new FormData(form).entries());
    location.hash = "#/tasks" + query(chosen);
  });
  const tbody = el("tbody", {});
  const pager = el("div", { class: "pager" });
  const live = el("span", { class: "live", title: "Rows change as the bus records events" }, "● live");
  show(el("h1", {}, "Tasks ", live), form,
    el("table", { class: "grid", id: "tasks" },
      el("thead", {}, el("tr", {}, ["Sent (UTC)", "Task", "From", "To", "Command", "State",
        "Attempts", "Child", "Updated"].map((h) => el("th", {}, h)))), tbody),
    pager);

  const refresh = serial(async () => {
    try {
      const bounds = page.before ? { before: page.before, before_id: page.before_id } : {};
      const found = await api("/tasks" + query({ ...filters, ...bounds, limit: limit || 50 }), { signal });
      tbody.replaceChildren(...found.tasks.map(taskRow));
      if (found.tasks.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No task matches.")));
      const next = found.next_page;
      pager.replaceChildren(
        page.before ? el("a", { href: "#/tasks" + query({ ...filters, limit }), class: "button-like", id: "newest" }, "⇤ Newest") : "",
        next ? el("a", { href: "#/tasks" + query({ ...filters, limit, page_before: next.before, page_before_id: next.before_id }), class: "button-like", id: "older" }, "Older →") : "");
      notice("");
    } catch (error) {
      if (!signal.aborted) notice(`Tasks not read: ${failure(error)}`);
    }
  });
  await refresh();
  follow({}, debounced(refresh), signal, refresh);
}

function taskRow(t) {
  return el("tr", { "data-task-id": t.task_id },
    el("td", {}, when(t.created_at)), el("td", {}, taskLink(t.task_id)), el("td", {}, t.from ?? ""),
    el("td", {}, t.to ?? ""), el("td", {}, t.cmd ?? ""),
    el("td", {}, badge(t.task_status), t.error ? el("span", { class: "error small", title: t.error }, " ", t.error.slice(0, 60)) : ""),
    el("td", { class: "num" }, t.attempts), el("td", {}, t.child_id ?? ""),
    el("td", {}, ago(t.updated_at)));
}

async function taskView(signal, taskId) {
  const box = el("div", { id: "task" }, el("p", { class: "muted" }, "Loading…"));
  show(box);
  let parked = null; // whether the task is in a parking lot (known to admin keys only)
  const refresh = serial(async () => {
    try {
      const [task, log] = await Promise.all([
        api(`/tasks/${encodeURIComponent(taskId)}`, { signal }),
        api("/logs" + query({ task_id: taskId, limit: 1000 }), { signal }),
      ]);
      if (task.task_status === "failed" && can("admin")) {
        parked = await api(`/dlq/${encodeURIComponent(taskId)}`, { signal }).then(() => true, () => false);
      }
      box.replaceChildren(...renderTask(task, log.logs, parked, refresh));
      notice("");
    } catch (error) {
      if (!signal.aborted) notice(`Task not read: ${failure(error)}`);
    }
  });
  await refresh();
  follow({ task_id: taskId }, debounced(refresh), signal, refresh);
}

function renderTask(t, entries, parked, refresh) {
  const actions = el("div", { class: "actions" });
  const act = async (what, request) => {
    try {
      await request();
    } catch (error) {
      return notice(`${what} refused: ${failure(error)}`);
    }
    await refresh();
    notice(`${what}: done.`, "ok");
  };
  actions.append(action("Cancel", ["send", "admin"],
    () => act("Cancel", () => api(`/tasks/${encodeURIComponent(t.task_id)}/cancel`, { method: "POST" })),
    { id: "cancel", disabled: FINAL.has(t.task_status), class: "danger" }));
  if (t.task_status === "failed") {
    const replayable = parked !== false;
    actions.append(action("Replay", ["admin"],
      () => act("Replay", () => api(`/dlq/${encodeURIComponent(t.task_id)}/replay`, { method: "POST" })),
      { id: "replay", disabled: !replayable, title: replayable ? "Send it back to its pool" : "Not in a parking lot" }));
  }
  const facts = [
    ["From", t.from], ["To", t.to], ["Command", t.cmd],
    ["Conversation", t.conversation_id ? conversationLink(t.conversation_id) : null],
    ["Attempts", t.attempts], ["Child", t.child_id], ["Priority", t.priority],
    ["Sent", when(t.created_at)], ["Updated", when(t.updated_at)], ["Ended", when(t.completed_at)],
    ["Deadline", when(t.deadline)], ["Not before", when(t.not_before)],
    ["Next attempt", when(t.next_attempt_at)],
    ["Progress", t.progress != null ? el("span", {}, el("progress", { max: 1, value: t.progress }), ` ${Math.round(t.progress * 100)} % ${t.progress_note ?? ""}`) : null],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  return [
    el("h1", {}, "Task ", el("span", { class: "mono" }, t.task_id), " ", badge(t.task_status)),
    actions,
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    t.withheld ? el("p", { class: "muted" }, `Withheld from this key: ${t.withheld.join(", ")}`) : null,
    t.error ? [el("h2", {}, "Error"), el("pre", { class: "error", id: "task-error" }, t.error)] : null,
    t.asking ? [el("h2", {}, `Waiting for ${t.asking.to} (round ${t.asking.round})`), json(t.asking.question)] : null,
    el("div", { class: "columns" },
      el("section", {}, el("h2", {}, "Payload"), t.text ? el("pre", { class: "text" }, t.text) : null, el("div", { id: "payload" }, json(t.payload ?? null))),
      el("section", {}, el("h2", {}, "Result"), el("div", { id: "result" }, json(t.result ?? null)))),
    el("h2", {}, "Timeline"),
    el("ol", { class: "timeline", id: "timeline" }, entries.map(timelineItem)),
  ].flat().filter(Boolean);
}

// What an entry of a task's log says, in words.
function describe(e) {
  const attempt = e.attempt ? ` (attempt ${e.attempt})` : "";
  switch (e.event) {
    case "send": return `sent by ${e.from ?? "?"} to ${e.to ?? "?"}${e.cmd ? `: ${e.cmd}` : ""}`;
    case "message": return `message from ${e.from ?? "?"} to ${e.to ?? "?"}`;
    case "processing": return `processing on ${e.child_id ?? "?"}${attempt}`;
    case "progress": return `progress ${e.progress != null ? Math.round(e.progress * 100) + " %" : ""} ${e.note ?? ""}`;
    case "retry": return `attempt ${e.attempt ?? "?"} failed on ${e.child_id ?? "?"}; next attempt ${e.next_at ? `in ${seconds(e.ts, e.next_at)} s` : "soon"}`;
    case "dead": return `parked${e.queue ? ` in ${e.queue}` : ""}${attempt}`;
    case "replay": return `replayed from the parking lot`;
    case "callback": return `callback from ${e.child_id ?? "?"}: ${e.status ?? ""}${attempt}`;
    case "ack": return `acknowledged by ${e.ack_by ?? "?"}`;
    case "lease": return `lease renewed by ${e.child_id ?? "?"}`;
    case "lease_expired": return `lease expired: sent again`;
    case "expired": return `expired`;
    case "cancel": return `canceled by ${e.canceled_by ?? "?"}`;
    case "input_required": return `asks ${e.to ?? "?"} (round ${e.round ?? "?"})`;
    case "input": return `answered by ${e.from ?? "?"} (round ${e.round ?? "?"})`;
    case "withdrawn": return `a queue refused this send (the sender got 503)`;
    default: return e.event;
  }
}

function timelineItem(e) {
  const details = [];
  if (e.error) details.push(el("pre", { class: "error" }, e.error));
  if (e.event === "input_required" && e.question !== undefined) details.push(json(e.question));
  if (e.event === "input" && e.answer !== undefined) details.push(json(e.answer));
  if (e.event === "callback" && e.result !== undefined) details.push(json(e.result));
  return el("li", { class: `event-${e.event}`, "data-event": e.event },
    el("time", { datetime: e.ts }, when(e.ts)), " ",
    el("strong", {}, e.event), " ", describe(e), details);
}

async function conversationView(signal, conversationId) {
  const box = el("div", { id: "conversation" }, el("p", { class: "muted" }, "Loading…"));
  show(el("h1", {}, "Conversation ", el("span", { class: "mono" }, conversationId)),
    el("p", {}, el("a", { href: "#/tasks" + query({ conversation_id: conversationId }) }, "Its tasks in the table")),
    box);
  const refresh = serial(async () => {
    try {
      const log = await api("/logs" + query({ conversation_id: conversationId, limit: 1000 }), { signal });
      box.replaceChildren(log.logs.length === 1000 ? el("p", { class: "muted" }, "The last 1000 entries.") : "",
        el("ol", { class: "thread" }, log.logs.map(threadItem)));
      notice("");
    } catch (error) {
      if (!signal.aborted) notice(`Conversation not read: ${failure(error)}`);
    }
  });
  await refresh();
  follow({ conversation_id: conversationId }, debounced(refresh), signal, refresh);
}

function threadItem(e) {
  const said = [];
  if (e.text) said.push(el("p", { class: "said" }, e.text));
  if ((e.event === "message" || e.event === "send") && e.payload !== undefined) said.push(json(e.payload));
  if (e.event === "callback" && e.result !== undefined) said.push(json(e.result));
  if (e.error) said.push(el("pre", { class: "error" }, e.error));
  if (e.event === "input_required" && e.question !== undefined) said.push(json(e.question));
  if (e.event === "input" && e.answer !== undefined) said.push(json(e.answer));
  return el("li", { class: `bubble event-${e.event}`, "data-event": e.event },
    el("div", { class: "meta" }, el("strong", {}, e.from ?? e.child_id ?? ""), e.to ? ` → ${e.to}` : "", " · ",
      e.event, e.task_id ? [" · ", taskLink(e.task_id)] : "", " · ", el("time", { datetime: e.ts }, when(e.ts))),
    said);
}

async function parkedView(signal) {
  const box = el("div", { id: "parked" });
  const bar = el("div", { class: "actions" });
  show(el("h1", {}, "Parked tasks"), bar, box);
  if (!can("admin")) {
    bar.append(action("Replay all", ["admin"], () => {}), action("Purge", ["admin"], () => {}));
    box.append(el("p", { class: "muted" }, "Parking lots are for keys with the admin scope; this key may only look elsewhere."));
    return;
  }
  const refresh = serial(async () => {
    try {
      const list = await api("/dlq?limit=500", { signal });
      render(list.parked);
      notice("");
    } catch (error) {
      if (!signal.aborted) notice(`Parking lots not read: ${failure(error)}`);
    }
  });
  const run = async (what, request) => {
    let said;
    try {
      const done = await request();
      said = () => notice(`${what}: ${done.replayed ?? done.purged ?? 0} task(s).`, "ok");
    } catch (error) {
      said = () => notice(`${what} refused: ${failure(error)}`);
    }
    await refresh();
    said();
  };
  const render = (parked) => {
    const count = parked.length;
    bar.replaceChildren(
      action("Replay all", ["admin"], () => bar.append(confirmBar(`Send all ${count} parked task(s) back to their pools?`, "Yes, replay all",
        () => run("Replayed", () => api("/dlq/replay", { method: "POST" })))), { id: "replay-all", disabled: count === 0 }),
      action("Purge", ["admin"], () => bar.append(confirmBar(`Drop all ${count} parked task(s) for good?`, "Yes, purge",
        () => run("Purged", () => api("/dlq?confirm=true", { method: "DELETE" })))), { id: "purge", class: "danger", disabled: count === 0 }));
    if (count === 0) return box.replaceChildren(el("p", { class: "muted" }, "Nothing is parked."));
    box.replaceChildren(el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, ["Task", "Pool", "Attempt", "Replays", "Why", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, parked.map((p) => {
        const body = el("tr", { class: "parked-body", hidden: true }, el("td", { colspan: 6 }, json(p.body)));
        const row = el("tr", { "data-task-id": p.task_id },
          el("td", {}, taskLink(p.task_id)), el("td", {}, p.pool), el("td", { class: "num" }, p.attempt ?? ""),
          el("td", { class: "num" }, p.replays), el("td", { class: "error" }, p.reason),
          el("td", {},
            el("button", { type: "button", onclick: () => { body.hidden = !body.hidden; } }, "Inspect"), " ",
            action("Replay", ["admin"], () => run("Replayed", () => api(`/dlq/${encodeURIComponent(p.task_id)}/replay${query({ pool: p.pool })}`, { method: "POST" })), { class: "replay-one" })));
        return [row, body];
      }).flat())));
  };
  await refresh();
}

// ---- routing ----------------------------------------------------------------------------

function renderChrome() {
  const signedIn = session !== null;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  document.getElementById("who-name").textContent = signedIn
    ? `${session.me.name} (${session.me.scopes.join(", ")})` : "";
  const view = location.hash.slice(2).split(/[/?]/)[0] || "overview";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
}

function route() {
  if (current) current.abort();
  current = new AbortController();
  const { signal } = current;
  notice("");
  renderChrome();
  if (session === null) return signInView();
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  const [view, ...rest] = path.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  const params = new URLSearchParams(search);
  switch (view) {
    case "tasks": return tasksView(signal, params);
    case "task": return taskView(signal, arg);
    case "conversation": return conversationView(signal, arg);
    case "parked": return parkedView(signal);
    case "signin": location.hash = "#/overview"; return undefined;
    default: return overviewView(signal);
  }
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
