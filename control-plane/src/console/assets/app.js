// The Switchyard console: reads /console/api/state, follows /console/api/events (server-sent
// events read with fetch, so the token travels in a header), and re-reads the state when a
// change arrives. Every value is set with textContent: nothing from the cluster is parsed as
// HTML.
"use strict";

const KEY = "switchyard-token";
const FEED_MAX = 100;
let token = sessionStorage.getItem(KEY) || "";
let pending = null;
let lastState = null;

const $ = (sel) => document.querySelector(sel);

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function ago(ms) {
  if (ms < 1500) return "just now";
  const s = Math.round(ms / 1000);
  return s < 120 ? s + " s ago" : Math.round(s / 60) + " min ago";
}

function showLogin(message) {
  $("#main").hidden = true;
  $("#login").hidden = false;
  $("#signout").hidden = !token;
  $("#login-error").textContent = message || "";
}

async function load() {
  let res;
  try {
    res = await fetch("/console/api/state", { headers: headers(), cache: "no-store" });
  } catch (e) {
    $("#status").textContent = "cannot reach the node: " + e;
    return;
  }
  const body = await res.json().catch(() => ({ error: "unreadable answer (" + res.status + ")" }));
  if (res.status === 401) return showLogin(token ? body.error : "");
  if (!res.ok) {
    $("#status").textContent = body.error || "error " + res.status;
    return;
  }
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#signout").hidden = !token;
  $("#status").textContent = "";
  lastState = body;
  render(body);
  follow();
}

function refreshSoon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; load(); }, 50);
}

function render(s) {
  const n = s.node;
  document.body.dataset.revision = n.revision;
  $("#summary").textContent = "cluster " + (n.cluster_id || "?").slice(0, 8) + " · revision " + n.revision;
  $("#who").textContent = s.you.who + " (" + s.you.role + ")";
  $("#node").replaceChildren(
    "Served by node " + n.id + " (" + n.state + "), term " + n.term + ", leader " + (n.leader ?? "none") +
    ", revision ", el("b", { id: "revision" }, n.revision), ", transport " + n.security +
    ", " + s.sessions + " sessions bound.");
  fill($("#members tbody"), s.members.map((m) => el("tr", { "data-id": m.id },
    el("td", {}, m.id + (m.this ? " (this node)" : "")), el("td", {}, m.address), el("td", {}, m.role),
    el("td", {}, m.leader ? "★ leader" : ""), el("td", {}, m.lag == null ? "—" : m.lag))));

  const p = s.proxies;
  fill($("#proxies tbody"), p.error ? [el("tr", {}, el("td", { colSpan: 7, class: "error" }, p.error))]
    : p.list.map((x) => el("tr", { "data-proxy": x.id },
      el("td", {}, x.id), el("td", {}, x.revision), el("td", {}, ago(x.age_ms)), el("td", {}, x.connections),
      el("td", {}, x.handshake_failures), el("td", {}, x.node),
      el("td", { class: x.rejected ? "error" : "" }, x.rejected ? "rejected config: " + x.rejected : ""))));

  $("#pools").replaceChildren(...(s.pools.length ? [] : [el("p", {}, "No pools yet.")]), ...s.pools.map((pool) => {
    const rows = pool.backends.map((b) => el("tr", { "data-backend": pool.name + "/" + b.address },
      el("td", {}, b.address), el("td", {}, b.weight), el("td", { class: "state " + b.state }, b.state),
      el("td", { class: "health " + b.health }, b.health), el("td", {}, b.connections), el("td", {}, b.sessions),
      el("td", {}, b.zone), el("td", {}, ...(s.you.operate ? actions(pool.name, b) : []))));
    return el("div", { "data-pool": pool.name },
      el("h3", {}, pool.name + " ", el("small", {}, pool.algorithm +
        (pool.affinity ? " · affinity " + pool.affinity : "") + " · health check " + pool.health_check +
        (pool.backend_tls ? " · TLS to backends " + pool.backend_tls : ""))),
      el("table", {}, el("thead", {}, el("tr", {}, ...["backend", "weight", "state", "health", "connections",
        "sessions", "zone", ""].map((h) => el("th", {}, h)))), el("tbody", {}, ...rows)));
  }));

  fill($("#routes tbody"), s.routes.map((r) => el("tr", { "data-route": r.name },
    el("td", {}, r.name), el("td", {}, r.host || "any"), el("td", {}, r.path_prefix || "/"), el("td", {}, r.pool))));

  const a = s.audit;
  fill($("#audit tbody"), a.error ? [el("tr", {}, el("td", { colSpan: 5 }, a.error))]
    : a.list.map((r) => el("tr", {}, el("td", {}, r.revision), el("td", {}, new Date(r.at_ms).toLocaleString()),
      el("td", {}, r.who + " (" + r.role + ")"), el("td", {}, r.method), el("td", {}, r.summary))));
}

function actions(pool, b) {
  const act = (label, state, cls) => el("button", {
    class: cls, "data-action": state,
    onclick: () => confirmThen(label + " backend " + b.address + " in pool " + pool + "?" +
      (state === "draining" ? " Its connections are closed over the pool's drain timeout." : ""),
      () => setState(pool, b.address, state)),
  }, label);
  const out = [];
  if (b.state !== "draining") out.push(act("Drain", "draining", "drain"));
  if (b.state !== "active") out.push(act("Enable", "active", "enable"));
  if (b.state !== "disabled") out.push(act("Disable", "disabled", "disable"));
  return out;
}

function confirmThen(text, action) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  d.onclose = () => { if (d.returnValue === "yes") action(); };
  d.returnValue = "";
  d.showModal();
}

// A change the cluster refuses because it would take away a pool's last backend in service
// (409, naming --force) is offered again, forced, behind a second confirmation that quotes why.
async function setState(pool, address, state, force = false) {
  const res = await fetch("/console/api/backend-state", {
    method: "POST", headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ pool, address, state, force }),
  });
  const body = await res.json().catch(() => ({}));
  $("#status").textContent = res.ok ? "" : (body.error || "error " + res.status);
  if (res.status === 409 && !force && (body.error || "").includes("--force")) {
    confirmThen("The cluster refused: " + body.error + " Force it anyway?", () => setState(pool, address, state, true));
  }
  refreshSoon();
}

// The live feed. One stream at a time; when it ends it is opened again after a pause.
let following = false;
async function follow() {
  if (following) return;
  following = true;
  const badge = $("#live");
  try {
    const res = await fetch("/console/api/events", { headers: headers(), cache: "no-store" });
    if (!res.ok || !res.body) throw new Error("events: " + res.status);
    badge.textContent = "live";
    badge.className = "badge on";
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        onEvent(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
      }
    }
  } catch (e) {
    // Shown by the badge; the state is re-read when the stream is back.
  }
  badge.textContent = "offline";
  badge.className = "badge off";
  following = false;
  setTimeout(() => { if (!$("#main").hidden) load(); }, 2000);
}

function onEvent(block) {
  let name = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) name = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (name === "change") {
    const c = JSON.parse(data);
    const feed = $("#feed");
    for (const text of c.changes) {
      feed.prepend(el("li", { value: c.revision, "data-revision": c.revision }, text));
    }
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
    if (!lastState || c.revision > lastState.node.revision) refreshSoon();
  } else if (name === "reset") {
    refreshSoon();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("#token").value.trim();
    sessionStorage.setItem(KEY, token);
    $("#token").value = "";
    load();
  });
  $("#signout").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(KEY);
    location.reload();
  });
  load();
  // Proxy ages and connection counts move without a change; re-read them now and then.
  setInterval(() => { if (!$("#main").hidden && !document.hidden) load(); }, 3000);
});
