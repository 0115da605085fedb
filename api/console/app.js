// The gateway's console: every page reads the public HTTP API (and the WebSocket channel)
// with the key the user signed in with, kept in this tab's sessionStorage only.
"use strict";

const KEY = "gateway.console.key";
const PAGES = {
  usage: { roles: ["analyst", "admin"], show: showUsage },
  budgets: { roles: ["analyst", "admin"], show: showBudgets },
  sessions: { roles: ["reader", "writer", "admin"], show: showSessions },
  records: { roles: ["reader", "writer", "admin"], show: showRecords },
  live: { roles: ["reader", "writer", "admin"], show: showLive },
};
const COLORS = ["#0b5cad", "#c2410c", "#1e6b35", "#7c3aed", "#a4161a", "#0f766e", "#8a5300", "#be185d"];

let me = null;
let live = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function credentials() {
  const key = sessionStorage.getItem(KEY);
  if (!key) return {};
  return key.split(".").length === 3 ? { Authorization: `Bearer ${key}` } : { "X-API-Key": key };
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || `HTTP_${status}`;
    this.requestId = error.requestId || null;
  }
}

let pending = 0;
async function api(path, options = {}) {
  pending += 1;
  $("busy").hidden = false;
  try {
    const response = await fetch(path, {
      ...options,
      headers: { ...credentials(), ...(options.headers || {}) },
    });
    const type = response.headers.get("content-type") || "";
    const body = type.includes("json") ? await response.json() : await response.text();
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  } finally {
    pending -= 1;
    $("busy").hidden = pending === 0;
  }
}

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  if (error instanceof ApiError) {
    box.append(
      el("strong", {}, error.code), " ", error.message,
      error.requestId ? el("div", {}, "Request id: ", el("code", {}, error.requestId)) : null,
    );
    if (error.status === 401) signOut();
  } else {
    box.append(el("strong", {}, "Error"), " ", String(error.message || error));
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function empty(...text) {
  return el("div", { class: "empty" }, ...text);
}

function table(columns, rows, onClick) {
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null, scope: "col" }, c.title)));
  const body = rows.map((row) => {
    const tr = el("tr", {}, columns.map((c) => el("td", { class: c.num ? "num" : null }, c.value(row))));
    if (onClick) {
      tr.classList.add("clickable");
      tr.tabIndex = 0;
      tr.addEventListener("click", () => onClick(row));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onClick(row); } });
    }
    return tr;
  });
  // Wide tables scroll inside their box, not the page (phones).
  return el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, body)));
}

// Money is integer micro-dollars end to end; only display divides.
function usd(micros) {
  const sign = micros < 0 ? "-" : "";
  const abs = Math.abs(micros);
  const dollars = Math.floor(abs / 1e6);
  const rest = String(abs % 1e6).padStart(6, "0");
  return `${sign}$${dollars}.${rest}`;
}

function fmt(measure, value) {
  return measure === "costMicros" ? usd(value) : value.toLocaleString("en-US");
}

// ---- sign-in ---------------------------------------------------------------------------

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    me = await api("/v1/me");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    me = null;
    throw error;
  }
  const tenant = me.tenant ? me.tenant.id : "platform";
  $("principal").textContent = `${tenant} · ${me.roles.join(", ")}`;
  for (const link of document.querySelectorAll("nav a")) {
    link.hidden = !allowed(link.dataset.page);
  }
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
}

function allowed(page) {
  return me && PAGES[page].roles.some((role) => me.roles.includes(role));
}

function signOut() {
  sessionStorage.removeItem(KEY);
  me = null;
  stopLive();
  for (const page of document.querySelectorAll(".page")) page.hidden = true;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("key").value = "";
  if (location.hash) history.replaceState(null, "", location.pathname);
}

async function route() {
  clearError();
  if (!me) return;
  const wanted = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const page = wanted && allowed(wanted) ? wanted : Object.keys(PAGES).find(allowed);
  if (!page) {
    showError(new Error("this key's roles open no page of the console"));
    return;
  }
  if (page !== "live") stopLive();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${page}`;
  try {
    await PAGES[page].show();
  } catch (error) {
    showError(error);
  }
}

// ---- usage -----------------------------------------------------------------------------

function browserZone() {
  try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch { return "UTC"; }
}

function isoDate(date) {
  return date.toISOString().slice(0, 10);
}

// The offset of `zone` from UTC at instant `ms`, in milliseconds.
function zoneOffset(ms, zone) {
  const parts = new Intl.DateTimeFormat("en-US", {
    timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  }).formatToParts(new Date(ms));
  const get = (type) => Number(parts.find((p) => p.type === type).value);
  const local = Date.UTC(get("year"), get("month") - 1, get("day"), get("hour"), get("minute"), get("second"));
  return local - Math.floor(ms / 1000) * 1000;
}

// Midnight starting `date` (YYYY-MM-DD) in `zone`, as a UTC instant on a whole hour.
function zonedMidnight(date, zone) {
  const [y, m, d] = date.split("-").map(Number);
  const guess = Date.UTC(y, m - 1, d);
  let instant = guess - zoneOffset(guess, zone);
  instant = guess - zoneOffset(instant, zone);
  return new Date(Math.floor(instant / 3600000) * 3600000).toISOString().replace(".000Z", "Z");
}

let usageShown = null;

async function showUsage() {
  if (!$("usage-from").value) {
    const today = new Date();
    $("usage-to").value = isoDate(today);
    $("usage-from").value = isoDate(new Date(today.getTime() - 29 * 86400000));
    $("usage-tz").value = browserZone();
  }
  const from = $("usage-from").value;
  const to = $("usage-to").value;
  const zone = $("usage-tz").value.trim() || "UTC";
  const windowSize = $("usage-window").value;
  const group = $("usage-group").value;
  const measure = $("usage-measure").value;
  if (to < from) throw new Error("the range ends before it starts");
  const next = new Date(Date.parse(`${to}T00:00:00Z`) + 86400000);
  const query = (groupBy) => new URLSearchParams({
    from: zonedMidnight(from, zone),
    to: zonedMidnight(isoDate(next), zone),
    windowSize,
    windowTimeZone: zone,
    groupBy,
  });
  const [series, byAgent, agents] = await Promise.all([
    api(`/v1/usage/query?${query(group)}`),
    api(`/v1/usage/query?${query("agentId")}`).catch(() => null),
    api("/v1/agents?limit=500").catch(() => ({ agents: [] })),
  ]);
  const names = new Map((agents.agents || []).map((a) => [a.id, a.name]));
  const label = (key) => (group === "agentId" && names.get(key)) || key || "(none)";
  const windows = [...new Set(series.data.map((row) => row.windowStart))].sort();
  const keys = [...new Set(series.data.map((row) => row.groupBy[group] || ""))].sort();
  const value = (windowStart, key) => series.data
    .filter((row) => row.windowStart === windowStart && (row.groupBy[group] || "") === key)
    .reduce((sum, row) => sum + row[measure], 0);
  const totals = series.data.reduce((t, row) => ({
    costMicros: t.costMicros + row.costMicros,
    tokensTotal: t.tokensTotal + row.tokensTotal,
    messages: t.messages + row.messages,
  }), { costMicros: 0, tokensTotal: 0, messages: 0 });
  usageShown = { windows, keys, value, measure, label, zone };

  $("usage-totals").replaceChildren(
    el("div", {}, "Cost", el("strong", { id: "usage-total-cost", "data-micros": totals.costMicros }, usd(totals.costMicros))),
    el("div", {}, "Tokens", el("strong", { id: "usage-total-tokens" }, totals.tokensTotal.toLocaleString("en-US"))),
    el("div", {}, "Messages", el("strong", { id: "usage-total-messages" }, totals.messages.toLocaleString("en-US"))),
  );
  if (series.data.length === 0) {
    $("usage-chart").replaceChildren(empty(
      "No billed replies in this range. Send a first message: create an agent (POST /v1/agents), a session (POST /v1/sessions), then ",
      el("code", {}, "curl -X POST http://localhost:8080/v1/sessions/<id>/messages -H 'X-API-Key: …' -H 'Idempotency-Key: first' -H 'content-type: application/json' -d '{\"content\": \"Hello\"}'"),
    ));
    $("usage-table").replaceChildren();
    $("usage-agents").replaceChildren();
    return;
  }
  $("usage-chart").replaceChildren(chart(windows, keys, value, label, measure), legend(keys, label));
  $("usage-table").replaceChildren(table(
    [{ title: "Window", value: (w) => w }]
      .concat(keys.map((k) => ({ title: label(k), num: true, value: (w) => fmt(measure, value(w, k)) }))),
    windows,
  ));
  const ranked = byAgent ? byAgent.data.reduce((m, row) => {
    const id = row.groupBy.agentId || "";
    m.set(id, (m.get(id) || 0) + row.costMicros);
    return m;
  }, new Map()) : new Map();
  const top = [...ranked.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10);
  $("usage-agents").replaceChildren(top.length ? table([
    { title: "Agent", value: ([id]) => names.get(id) || id },
    { title: "Cost", num: true, value: ([, micros]) => usd(micros) },
  ], top) : empty("No agent has billed replies in this range."));
}

function chart(windows, keys, value, label, measure) {
  const step = Math.min(48, Math.max(6, 900 / windows.length));
  const width = Math.max(360, windows.length * step + 90);
  const height = 260;
  const left = 70; const bottom = 40; const top = 10;
  const stacks = windows.map((w) => keys.reduce((sum, k) => sum + value(w, k), 0));
  const max = Math.max(1, ...stacks);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${measure} by window, stacked by ${keys.map(label).join(", ")}`);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const plot = height - bottom - top;
  add("line", { x1: left, y1: top + plot, x2: width - 10, y2: top + plot, stroke: "#7b8594" });
  add("text", { x: left - 6, y: top + 10, "text-anchor": "end", "font-size": 11 }, fmt(measure, max));
  add("text", { x: left - 6, y: top + plot, "text-anchor": "end", "font-size": 11 }, fmt(measure, 0));
  windows.forEach((w, i) => {
    let y = top + plot;
    keys.forEach((k, j) => {
      const v = value(w, k);
      if (!v) return;
      const h = (v / max) * plot;
      y -= h;
      const rect = add("rect", { x: left + i * step + 2, y, width: Math.max(2, step - 4), height: h, fill: COLORS[j % COLORS.length] });
      const title = document.createElementNS(ns, "title");
      title.textContent = `${w} · ${label(k)}: ${fmt(measure, v)}`;
      rect.append(title);
    });
    if (i % Math.max(1, Math.ceil(70 / step)) === 0) {
      const text = $("usage-window").value === "DAY" ? w.slice(0, 10) : w.slice(5, 16).replace("T", " ");
      add("text", { x: left + i * step + step / 2, y: height - 22, "text-anchor": "middle", "font-size": 10 }, text);
    }
  });
  return svg;
}

function legend(keys, label) {
  return el("div", { class: "legend" }, keys.map((k, j) => el("span", { style: `--swatch: ${COLORS[j % COLORS.length]}` }, label(k))));
}

// The CSV of what the usage page shows: one line per window and group.
function usageCsv() {
  if (!usageShown) return "";
  const { windows, keys, value, measure, label, zone } = usageShown;
  const quote = (s) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  const number = (v) => (measure === "costMicros" ? usd(v).replace("$", "") : String(v));
  const lines = [["windowStart", "timeZone", "group", measure === "costMicros" ? "costUsd" : measure].join(",")];
  for (const w of windows) {
    for (const k of keys) lines.push([w, zone, quote(label(k)), number(value(w, k))].join(","));
  }
  return lines.join("\n") + "\n";
}

function downloadCsv() {
  if (!usageShown) return;
  const blob = new Blob([usageCsv()], { type: "text/csv" });
  const link = el("a", { href: URL.createObjectURL(blob), download: "usage.csv" });
  document.body.append(link);
  link.click();
  link.remove();
}

// ---- budgets ---------------------------------------------------------------------------

async function showBudgets() {
  const [{ budgets }, agents] = await Promise.all([
    api("/v1/budgets"),
    api("/v1/agents?limit=500").catch(() => ({ agents: [] })),
  ]);
  const names = new Map((agents.agents || []).map((a) => [a.id, a.name]));
  if (!budgets.length) {
    $("budgets").replaceChildren(empty("No budget is set. An admin sets one with ",
      el("code", {}, "PUT /v1/budgets/tenant {\"monthlyLimitUsd\": 100, \"enforcement\": \"hard\"}"), "."));
    return;
  }
  const now = new Date();
  const start = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
  const end = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1);
  const elapsed = Math.max((now.getTime() - start) / (end - start), 1 / 720);
  $("budgets").replaceChildren(table([
    { title: "Scope", value: (b) => (b.scope === "agent" ? `Agent ${names.get(b.agentId) || b.agentId}` : "Tenant") },
    { title: "Limit", num: true, value: (b) => usd(b.monthlyLimitMicros) },
    { title: "Spent this month", num: true, value: (b) => usd(b.spentMicros) },
    { title: "Used", value: (b) => {
      const share = b.monthlyLimitMicros ? b.spentMicros / b.monthlyLimitMicros : 0;
      return el("span", {}, el("div", { class: `bar${share >= 1 ? " over" : ""}`, role: "img", "aria-label": `${(share * 100).toFixed(1)} percent` },
        el("span", { style: `width: ${Math.min(100, share * 100)}%` })), `${(share * 100).toFixed(1)} %`);
    } },
    { title: "Projected month end", num: true, value: (b) => usd(Math.round(b.spentMicros / elapsed)) },
    { title: "Enforcement", value: (b) => b.enforcement },
    { title: "State", value: (b) => (b.spentMicros >= b.monthlyLimitMicros
      ? el("span", { class: "tag bad" }, "exceeded")
      : b.spentMicros / elapsed > b.monthlyLimitMicros ? el("span", { class: "tag warn" }, "on track to exceed") : el("span", { class: "tag ok" }, "within")) },
  ], budgets));
}

// ---- sessions --------------------------------------------------------------------------

async function showSessions() {
  const agents = await api("/v1/agents?limit=500");
  const select = $("sessions-agent");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "All agents"),
    ...(agents.agents || []).map((a) => el("option", { value: a.id }, a.name)));
  select.value = chosen;
  const names = new Map((agents.agents || []).map((a) => [a.id, a.name]));
  const params = new URLSearchParams({ limit: "100" });
  if (select.value) params.set("agentId", select.value);
  if ($("sessions-customer").value.trim()) params.set("customerId", $("sessions-customer").value.trim());
  if ($("sessions-status").value) params.set("status", $("sessions-status").value);
  const { sessions } = await api(`/v1/sessions?${params}`);
  if (!sessions.length) {
    $("sessions").replaceChildren(empty("No session matches. Sessions start with POST /v1/sessions {\"agentId\": …}."));
    return;
  }
  $("sessions").replaceChildren(table([
    { title: "Session", value: (s) => s.id },
    { title: "Agent", value: (s) => names.get(s.agentId) || s.agentId },
    { title: "Customer", value: (s) => s.customerId || "" },
    { title: "Status", value: (s) => s.status },
    { title: "Messages", num: true, value: (s) => s.messageCount },
    { title: "Last activity", value: (s) => s.lastActivityAt },
  ], sessions, (s) => showTranscript(s.id).catch(showError)));
}

async function showTranscript(id) {
  const [transcript, calls] = await Promise.all([
    api(`/v1/sessions/${encodeURIComponent(id)}/transcript`),
    api(`/v1/sessions/${encodeURIComponent(id)}/provider-calls`).catch(() => ({ calls: [] })),
  ]);
  const attempts = (message) => calls.calls.filter((c) => c.messageId === message.replyTo || c.messageId === message.id);
  const box = $("transcript");
  box.replaceChildren(el("h3", { id: "transcript-title", tabindex: "-1" }, `Transcript of ${id}`),
    ...(transcript.messages.length ? transcript.messages.map((m) => el("div", { class: `message ${m.role}` },
      el("div", { class: "meta" }, m.role === "assistant"
        ? `${m.provider} · ${m.model} · ${attempts(m).length} attempt(s)${m.fallbackUsed ? " · fallback" : ""} · ${m.usage ? `${m.usage.tokensIn} + ${m.usage.tokensOut} tokens · ${usd(m.usage.costMicros)}` : ""}`
        : `user · ${m.createdAt}`),
      el("div", {}, m.content),
      m.role === "assistant" && attempts(m).length ? el("details", {}, el("summary", {}, "Provider calls"),
        table([
          { title: "Provider", value: (c) => c.provider },
          { title: "Attempt", num: true, value: (c) => c.attempt },
          { title: "Status", value: (c) => c.status },
          { title: "Latency", num: true, value: (c) => `${c.latencyMs} ms` },
        ], attempts(m))) : null,
    )) : [empty("No message yet.")]));
  $("transcript-title").focus();
}

// ---- records ---------------------------------------------------------------------------

let recordsCursor = null;

async function showRecords(more) {
  const select = $("records-type");
  if (!select.options.length || !more) {
    const { items } = await api("/v1/entity-types");
    const chosen = select.value;
    select.replaceChildren(...items.map((t) => el("option", { value: t.name }, t.name)));
    if (chosen) select.value = chosen;
    if (!items.length) {
      $("records").replaceChildren(empty("No entity type yet. An admin defines one with POST /v1/entity-types, or imports the panorama catalogue."));
      $("records-schema").replaceChildren();
      return;
    }
    const type = items.find((t) => t.name === select.value) || items[0];
    $("records-schema").replaceChildren(el("details", {}, el("summary", {}, `Schema of ${type.name}`),
      table([
        { title: "Field", value: ([name]) => name },
        { title: "Type", value: ([, f]) => f.type + (f.references ? ` → ${f.references}` : "") },
        { title: "Rules", value: ([, f]) => ["required", "unique", "indexed"].filter((r) => f[r]).join(", ") },
      ], Object.entries(type.schema.fields || {})),
      Object.keys(type.schema.relations || {}).length
        ? el("p", {}, "Relations: ", Object.entries(type.schema.relations).map(([n, r]) => `${n} → ${r.to}`).join(", ")) : null));
  }
  const params = new URLSearchParams({ limit: "20" });
  const where = $("records-where").value.trim();
  const order = $("records-order").value.trim();
  if (where) params.set("where", where);
  if (order) params.set("orderBy", order);
  if (more && recordsCursor) params.set("cursor", recordsCursor);
  const page = await api(`/v1/${encodeURIComponent(select.value)}?${params}`);
  recordsCursor = page.nextCursor;
  const rows = table([
    { title: "Id", value: (r) => r.id },
    { title: "Version", num: true, value: (r) => r.version },
    { title: "Data", value: (r) => el("code", {}, JSON.stringify(r.data)) },
    { title: "Updated", value: (r) => r.updatedAt },
  ], page.items, (r) => showHistory(select.value, r.id).catch(showError));
  const parts = [page.items.length ? rows : empty("No record matches this filter.")];
  if (page.nextCursor) {
    parts.push(el("button", { type: "button", class: "secondary", id: "records-next",
      onclick: () => showRecords(true).catch(showError) }, "Next page"));
  }
  $("records").replaceChildren(...parts);
}

async function showHistory(type, id) {
  const history = await api(`/v1/${encodeURIComponent(type)}/${encodeURIComponent(id)}/history`);
  $("record-history").replaceChildren(el("h3", { id: "history-title", tabindex: "-1" }, `History of ${type}/${id}`),
    table([
      { title: "Version", num: true, value: (e) => e.version },
      { title: "Event", value: (e) => e.eventType },
      { title: "When", value: (e) => e.recordedAt },
      { title: "Who", value: (e) => e.actor || "" },
      { title: "Changes", value: (e) => el("code", {}, JSON.stringify(e.changes)) },
    ], history.events));
  $("history-title").focus();
}

// ---- live ------------------------------------------------------------------------------

function stopLive() {
  if (live) {
    live.closing = true;
    live.socket.close(1000);
    live = null;
  }
}

function showLive() {
  if (live) return;
  const key = sessionStorage.getItem(KEY);
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
  const state = { socket: new WebSocket(url), paused: false, cursor: null, closing: false };
  live = state;
  const status = $("live-state");
  const list = $("live-events");
  if (!list.children.length) list.append(el("li", { class: "empty", id: "live-empty" }, "Waiting for events: any command of this tenant shows up here."));
  const send = (message) => state.socket.send(JSON.stringify(message));
  const subscribe = () => send({ type: "subscribe", id: "console", ...(state.cursor ? { after: state.cursor } : {}) });
  state.socket.addEventListener("open", () => {
    const auth = key.split(".").length === 3 ? { token: key } : { apiKey: key };
    send({ type: "auth", ...auth });
  });
  state.socket.addEventListener("message", (frame) => {
    const message = JSON.parse(frame.data);
    if (message.type === "ready") subscribe();
    else if (message.type === "subscribed") status.textContent = "Live";
    else if (message.type === "unsubscribed") status.textContent = "Paused";
    else if (message.type === "event" && !state.paused) {
      state.cursor = message.cursor;
      const e = message.event;
      const item = el("li", { class: "event" }, el("details", {},
        el("summary", {}, `${e.recordedAt} · ${e.eventType} · ${e.aggregateType} ${e.aggregateId}`),
        el("pre", {}, JSON.stringify(e, null, 2))));
      const placeholder = $("live-empty");
      if (placeholder) placeholder.remove();
      list.prepend(item);
      while (list.children.length > 200) list.lastChild.remove();
    } else if (message.type === "close" || message.type === "error") {
      status.textContent = `${message.code}: ${message.message}`;
    }
  });
  state.socket.addEventListener("close", () => {
    if (!state.closing && live === state) {
      status.textContent = "Disconnected; reconnecting…";
      live = null;
      setTimeout(() => { if (me && location.hash.startsWith("#/live")) showLive(); }, 2000);
    }
  });
  $("live-toggle").onclick = () => {
    state.paused = !state.paused;
    $("live-toggle").textContent = state.paused ? "Resume" : "Pause";
    $("live-toggle").setAttribute("aria-pressed", String(state.paused));
    if (state.paused) send({ type: "unsubscribe", id: "console" });
    else subscribe();
  };
}

// ---- wiring ----------------------------------------------------------------------------

window.addEventListener("DOMContentLoaded", async () => {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    try {
      await signIn($("key").value.trim());
      await route();
      $("main").focus();
    } catch (error) {
      showError(error);
    }
  });
  $("sign-out").addEventListener("click", signOut);
  $("usage-form").addEventListener("submit", (e) => { e.preventDefault(); clearError(); showUsage().catch(showError); });
  $("usage-csv").addEventListener("click", downloadCsv);
  $("sessions-form").addEventListener("submit", (e) => { e.preventDefault(); clearError(); showSessions().catch(showError); });
  $("records-form").addEventListener("submit", (e) => { e.preventDefault(); clearError(); showRecords(false).catch(showError); });
  $("records-type").addEventListener("change", () => { $("records-where").value = ""; showRecords(false).catch(showError); });
  window.addEventListener("hashchange", route);
  if (sessionStorage.getItem(KEY)) {
    try {
      await signIn(sessionStorage.getItem(KEY));
      await route();
    } catch (error) {
      showError(error);
    }
  }
});
