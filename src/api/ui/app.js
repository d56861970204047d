// Sluice's status page: reads the same API every client uses (GET /health, GET /runs,
// GET /runs/{id}, and the event streams), with the bearer token the person enters once
// (kept in sessionStorage, so for this tab only). Event streams are read with fetch so
// they can carry the token, and resume with Last-Event-ID after a drop. Every value from
// the server reaches the page as text, never as markup.
"use strict";

const TOKEN_KEY = "sluice-token";
const HEALTH_EVERY_MS = 2000;
const HISTORY = 150;
const RECENT = 40;
const RECONNECT_MS = 1000;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  depth: [],
  recent: new Map(),
  health: null,
  viewAbort: null,
};

// ---- DOM ------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    // Through the CSSOM: the page's policy refuses style attributes in markup.
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headings, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}

function section(title, id, ...body) {
  return el("section", { id, "aria-labelledby": id + "-title" }, el("h2", { id: id + "-title" }, title), ...body);
}

function shortId(id) {
  return String(id).slice(-12);
}

function ago(time) {
  if (!time) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(time)) / 1000));
  return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}

// ---- API ------------------------------------------------------------------------------

function authHeaders() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    showLogin("(the server asks for one)");
    throw new Unauthorized("unauthorized");
  }
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

// Follows a server-sent event stream over fetch (so it carries the token), calling
// `onEvent({id, event, data})` for each event and resuming with Last-Event-ID after a
// drop, until `signal` aborts or `isDone()` says the stream is complete.
async function follow(path, onEvent, signal, isDone = () => false) {
  let lastId = null;
  while (!signal.aborted && !isDone()) {
    try {
      const headers = { ...authHeaders(), Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers, signal });
      if (response.status === 401) { showLogin("(the server asks for one)"); return; }
      if (!response.ok || !response.body) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = { id: null, event: "message", data: "" };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, cut).replace(/\r$/, "");
          buffer = buffer.slice(cut + 1);
          if (line === "") {
            if (event.data) {
              if (event.id !== null) lastId = event.id;
              let data = null;
              try { data = JSON.parse(event.data); } catch { data = event.data; }
              onEvent({ id: event.id, event: event.event, data });
            }
            event = { id: null, event: "message", data: "" };
          } else if (line.startsWith(":")) {
            // keep-alive comment
          } else {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") event.data += (event.data ? "\n" : "") + text;
            else if (field === "event") event.event = text;
            else if (field === "id") event.id = text;
          }
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    if (!isDone()) await new Promise((r) => setTimeout(r, RECONNECT_MS));
  }
}

// ---- Login ----------------------------------------------------------------------------

function showLogin(reason) {
  const form = document.getElementById("login");
  document.getElementById("login-reason").textContent = reason || "";
  form.hidden = false;
  document.getElementById("token").focus();
}

function setupLogin() {
  const form = document.getElementById("login");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    form.hidden = true;
    route();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    document.getElementById("token").value = "";
  });
  document.getElementById("token-button").addEventListener("click", () => {
    form.hidden = !form.hidden;
    if (!form.hidden) document.getElementById("token").focus();
  });
}

// Re-rendering a table must not take the keyboard's place away: the run row that had the
// focus gets it back.
function keepFocus(render) {
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.run : null;
  render();
  if (focused) {
    const row = document.querySelector('tr[data-run="' + focused + '"]');
    if (row) row.focus({ preventScroll: true });
  }
}

// ---- Overview -------------------------------------------------------------------------

function renderStatus(health) {
  const badge = document.getElementById("status");
  badge.textContent = health ? health.status : state.healthDenied ? "operator view closed" : "unreachable";
  badge.className = "badge " + (health ? health.status : "unavailable");
}

function queueNumbers(q) {
  const item = (n, label) => el("div", {}, el("strong", {}, n), el("span", {}, label));
  if (!q) return el("p", { class: "error" }, "Queue depths unavailable");
  return el("div", { class: "numbers" },
    item(q.live.queued, "live queued"), item(q.live.running, "live running"),
    item(q.background.queued, "background queued"), item(q.background.running, "background running"));
}

const SERIES = [
  ["live queued", (q) => q.live.queued, "#2458a6"],
  ["background queued", (q) => q.background.queued, "#a05a00"],
  ["running", (q) => q.live.running + q.background.running, "#1f7a3a"],
];

function chart(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 " + HISTORY + " 100");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Queue depth over the last " + Math.round(HISTORY * HEALTH_EVERY_MS / 60000) + " minutes");
  const max = Math.max(1, ...points.flatMap((q) => SERIES.map(([, f]) => f(q))));
  for (const [, f, colour] of SERIES) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("stroke", colour);
    const offset = HISTORY - points.length;
    line.setAttribute("points", points.map((q, i) => (offset + i) + "," + (100 - (f(q) / max) * 96 - 2)).join(" "));
    svg.append(line);
  }
  const legend = el("div", { class: "legend" }, SERIES.map(([label, , colour]) =>
    el("span", {}, el("span", { class: "swatch", style: { background: colour } }), label)),
    el("span", {}, "max " + max));
  return el("div", {}, svg, legend);
}

function providersTable(providers) {
  const rate = (v) => (v === null || v === undefined ? "–" : Math.round(v));
  return table(["provider", "breaker", "rate now", "configured", "stated", "learned", "in flight", "paused"],
    providers.map((p) => el("tr", {},
      el("td", {}, p.name, el("span", { class: "note" }, " " + p.kind)),
      el("td", { class: p.breaker }, p.breaker),
      el("td", {}, rate(p.current_rpm)), el("td", {}, rate(p.rpm)), el("td", {}, rate(p.stated_rpm)),
      el("td", {}, rate(p.learned_rpm)), el("td", {}, p.in_flight), el("td", { class: p.paused ? "paused" : "" }, p.paused ? "yes" : "no"))));
}

function replicasTable(cluster) {
  if (!cluster) return el("p", { class: "error" }, "Cluster view unavailable");
  return table(["replica", "slots in use", "version", "last beat", ""],
    cluster.replicas.map((r) => el("tr", {},
      el("td", {}, shortId(r.id), r.id === cluster.this_replica ? el("span", { class: "note" }, " (this one)") : null),
      el("td", {}, el("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": r.slots, "aria-valuenow": r.in_flight,
        "aria-label": r.in_flight + " of " + r.slots + " slots" },
        el("div", { style: { width: Math.round((100 * r.in_flight) / Math.max(1, r.slots)) + "%" } })), " " + r.in_flight + " / " + r.slots),
      el("td", {}, r.version), el("td", {}, ago(r.heartbeat_at)), el("td", {}, r.leader ? "leader" : ""))));
}

function runRow(run) {
  const open = () => { location.hash = "#/runs/" + run.id; };
  return el("tr", { class: "link", tabindex: 0, "data-run": run.id, onclick: open,
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } } },
    el("td", {}, el("a", { href: "#/runs/" + run.id }, shortId(run.id))),
    el("td", { class: run.status }, run.status), el("td", {}, run.provider || ""), el("td", {}, run.class || ""),
    el("td", {}, run.tenant || ""), el("td", {}, ago(run.updated || run.created_at)));
}

function recentTable() {
  const rows = [...state.recent.values()].sort((a, b) => (b.created_at || "").localeCompare(a.created_at || "")).slice(0, RECENT);
  return table(["run", "status", "provider", "class", "tenant", "changed"], rows.map(runRow));
}

function learnRun(id, fields) {
  const run = state.recent.get(id) || { id };
  Object.assign(run, fields);
  state.recent.set(id, run);
  if (state.recent.size > RECENT * 4) {
    const oldest = [...state.recent.values()].sort((a, b) => (a.created_at || "").localeCompare(b.created_at || ""));
    for (const r of oldest.slice(0, state.recent.size - RECENT * 2)) state.recent.delete(r.id);
  }
}

async function loadRecent() {
  try {
    const { status, body } = await api("/runs?limit=" + RECENT);
    if (status === 200 && body) {
      for (const run of body.items || []) learnRun(run.id, run);
    }
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
  }
}

async function overview(view, signal) {
  const status = section("Queues", "queues");
  const providers = section("Providers", "providers");
  const replicas = section("Replicas", "replicas");
  const recent = section("Recent runs", "recent");
  recent.classList.add("wide");
  status.classList.add("wide");
  view.replaceChildren(status, providers, replicas, recent);
  const paint = () => {
    const h = state.health;
    const missing = el("p", { class: "error" }, state.healthDenied ? "Shown with the admin token (an operator view)" : "Unreachable");
    status.replaceChildren(status.firstChild, h ? queueNumbers(h.queues) : missing.cloneNode(true), chart(state.depth));
    providers.replaceChildren(providers.firstChild, h ? providersTable(h.providers) : missing.cloneNode(true));
    replicas.replaceChildren(replicas.firstChild, h ? replicasTable(h.cluster) : missing);
    keepFocus(() => recent.replaceChildren(recent.firstChild, recentTable()));
  };
  paint();
  await loadRecent();
  paint();
  const pollHealth = async () => {
    while (!signal.aborted) {
      try {
        const { status, body } = await api("/health");
        state.health = status === 200 || status === 503 ? body : null;
        state.healthDenied = status === 403;
        if (state.health && state.health.queues) {
          state.depth.push(body.queues);
          if (state.depth.length > HISTORY) state.depth.shift();
        }
      } catch (e) {
        state.health = null;
      }
      renderStatus(state.health);
      paint();
      await new Promise((r) => setTimeout(r, HEALTH_EVERY_MS));
    }
  };
  pollHealth();
  follow("/events", ({ event, data }) => {
    if (!data || !data.run_id) return;
    const fields = { status: event === "attempt_failed" ? "queued" : event === "started" ? "running" : event, updated: data.at, class: data.class };
    if (event === "queued" && !state.recent.has(data.run_id)) fields.created_at = data.at;
    learnRun(data.run_id, fields);
    const run = state.recent.get(data.run_id);
    if (!run.provider && !run.fetching) {
      run.fetching = true;
      api("/runs/" + data.run_id).then(({ body }) => { if (body) learnRun(body.id, { provider: body.spec ? body.spec.provider : body.provider, tenant: body.tenant, created_at: body.created_at }); paint(); }).catch(() => {});
    }
    paint();
  }, signal);
}

// ---- One run --------------------------------------------------------------------------

async function runDetail(view, signal, id) {
  const facts = section("Run " + shortId(id), "run");
  const output = section("Output", "output");
  const attempts = section("Attempts", "attempts");
  const events = section("Events", "events");
  facts.classList.add("wide");
  view.replaceChildren(facts, output, attempts, events);
  const log = el("ol", { "aria-live": "polite" });
  const live = el("pre", {}, "");
  events.append(log);
  output.append(live);
  let finished = false;
  // What the page shows as output: the run's final output once it has one, else the
  // deltas of the attempt streaming now.
  let final = null;
  let streamed = "";
  const showOutput = () => { live.textContent = final !== null ? final : streamed; };
  const refresh = async () => {
    const { status, body: run } = await api("/runs/" + encodeURIComponent(id));
    if (status !== 200) { facts.append(el("p", { class: "error" }, status === 404 ? "No such run" : "Could not read the run")); finished = true; return; }
    const fact = (k, v, cls) => [el("dt", {}, k), el("dd", { class: cls }, v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : v)];
    facts.replaceChildren(facts.firstChild, el("dl", {},
      fact("id", run.id), fact("status", run.status, run.status), fact("provider", run.provider), fact("model", run.model),
      fact("class", run.class), fact("priority", run.priority), fact("tenant", run.tenant), fact("batch", run.batch),
      fact("attempts", run.attempts + " of " + run.max_attempts), fact("created", run.created_at),
      fact("started", run.started_at), fact("finished", run.finished_at), fact("usage", run.usage), fact("error", run.error)));
    if (run.output) final = run.output.content || JSON.stringify(run.output.tool_calls || run.output, null, 2);
    showOutput();
    attempts.replaceChildren(attempts.firstChild, table(["attempt", "started", "finished", "outcome", "status"],
      (run.attempt_log || []).map((a) => el("tr", {}, el("td", {}, a.attempt), el("td", {}, a.started_at), el("td", {}, a.finished_at || ""),
        el("td", { class: a.outcome || "running" }, a.outcome || "running"), el("td", {}, a.status || "")))));
  };
  await refresh();
  follow("/runs/" + encodeURIComponent(id) + "/events", ({ event, data }) => {
    if (event === "delta") {
      streamed += data.content || "";
      showOutput();
      return;
    }
    if (event === "started") streamed = "";
    log.append(el("li", {}, event + " " + (data.at || "") + (data.message ? " — " + data.message : "")));
    if (["completed", "failed", "timed_out", "cancelled", "dropped"].includes(event)) finished = true;
    refresh().catch(() => {});
  }, signal, () => finished);
}

// ---- Runs list ------------------------------------------------------------------------

async function runsList(view, signal) {
  const list = section("Runs", "runs");
  list.classList.add("wide");
  view.replaceChildren(list);
  await loadRecent();
  list.append(recentTable());
  follow("/events", ({ event, data }) => {
    if (!data || !data.run_id) return;
    learnRun(data.run_id, { status: event === "started" ? "running" : event, updated: data.at, class: data.class });
    keepFocus(() => list.replaceChildren(list.firstChild, recentTable()));
  }, signal);
}

// ---- Routing --------------------------------------------------------------------------

function route() {
  if (state.viewAbort) state.viewAbort.abort();
  const controller = new AbortController();
  state.viewAbort = controller;
  const view = document.getElementById("view");
  const hash = location.hash.replace(/^#/, "") || "/";
  const run = hash.match(/^\/runs\/([0-9a-fA-F-]{36})$/);
  const shown = run ? runDetail(view, controller.signal, run[1])
    : hash === "/runs" ? runsList(view, controller.signal)
    : overview(view, controller.signal);
  shown.catch((e) => { if (!(e instanceof Unauthorized)) view.append(el("p", { class: "error" }, String(e))); });
  view.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  setupLogin();
  route();
});
