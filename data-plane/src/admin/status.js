// The proxy's status page: reads /status every second and shows it. Values are set with
// textContent only.
"use strict";

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "—" : String(text);
  if (cls) td.className = cls;
  return td;
}

function row(...cells) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  return tr;
}

function render(s) {
  document.getElementById("proxy-id").textContent = s.proxy_id;
  const cp = s.control_plane;
  const rows = [
    ["config revision", s.config.revision + " (" + s.config.source + ", applied " + Math.round(s.config.age_seconds) + " s ago)"],
    ["control plane", cp.connected ? "following " + cp.node : "not connected (serving the last known config)", cp.connected ? "ok" : "bad"],
    ["behind the leader", cp.behind == null ? "unknown" : cp.behind + " revisions"],
    ["open connections", s.open_connections + " of " + s.max_connections],
    ["connections accepted", s.accepted],
  ];
  document.querySelector("#summary tbody").replaceChildren(
    ...rows.map(([k, v, cls]) => row(cell(k), cell(v, cls))));
  document.querySelector("#backends tbody").replaceChildren(...s.backends.map((b) => {
    const tr = row(cell(b.pool), cell(b.address), cell(b.active), cell(b.active_elsewhere), cell(b.total),
      cell(b.messages_to_backend + " / " + b.messages_to_client), cell(b.connect_failures),
      cell(b.ejected ? "yes" : "no", b.ejected ? "bad" : ""));
    tr.dataset.backend = b.pool + "/" + b.address;
    return tr;
  }));
  document.querySelector("#failures tbody").replaceChildren(
    ...Object.entries(s.handshake_failures).map(([k, v]) => row(cell(k), cell(v))));
}

async function tick() {
  try {
    const res = await fetch("/status", { cache: "no-store" });
    render(await res.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot read /status: " + e;
  }
}

tick();
setInterval(tick, 1000);
