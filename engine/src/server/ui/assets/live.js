// beamflow's web page: live updates from the server's event stream
// (/api/events, server-sent events), and the "start a run" form. Rows and
// pages are rendered by the server; this script only fetches them again
// when the server says something changed. No page polling.
"use strict";

function liveDot(on) {
  const dot = document.getElementById("live");
  if (dot) {
    dot.classList.toggle("on", on);
    dot.title = on ? "Live: following the server's events" : "Not connected to the server's events";
  }
}

// Opens the event stream; `onRun` gets each run update. `resync` runs on
// every (re)connection: what changed before the stream was open, or while
// it was down, is never sent, so the page fetches what it shows again. A
// lag (the page fell behind the server) reloads the page.
function follow(url, onRun, resync) {
  const es = new EventSource(url);
  es.onopen = () => { liveDot(true); resync(); };
  es.onerror = () => liveDot(false); // EventSource reconnects by itself
  es.addEventListener("run", (ev) => onRun(JSON.parse(ev.data)));
  es.addEventListener("lagged", () => location.reload());
  return es;
}

// A server-rendered fragment, or null when the answer is not one (signed
// out, the run gone, the server away).
async function fragment(url) {
  try {
    const resp = await fetch(url, { credentials: "same-origin" });
    if (!resp.ok || resp.redirected) return null;
    return await resp.text();
  } catch (e) {
    return null;
  }
}

// The runs list: changed rows are fetched again, new runs that match the
// filters are added on top. Updates arriving together are fetched once, by
// one refresh at a time, so an older answer never overwrites a newer one.
function liveRuns(table) {
  const tbody = table.tBodies[0];
  const flow = table.dataset.flow, state = table.dataset.state;
  const limit = parseInt(table.dataset.limit || "100", 10);
  const pending = new Set();
  let timer = null, busy = false;
  const schedule = () => { if (!timer) timer = setTimeout(refresh, 150); };
  async function refresh() {
    timer = null;
    if (busy) { schedule(); return; }
    busy = true;
    const ids = [...pending];
    pending.clear();
    for (const id of ids) {
      const html = await fragment(`/ui/runs/${id}/row`);
      const tpl = document.createElement("template");
      tpl.innerHTML = (html || "").trim();
      const row = tpl.content.firstElementChild;
      if (!row || row.tagName !== "TR") continue;
      const old = tbody.querySelector(`tr[data-run="${id}"]`);
      const fits = (!flow || row.dataset.flow === flow) && (!state || row.dataset.state === state);
      if (old && fits) {
        old.replaceWith(row);
      } else if (old) {
        old.remove();
      } else if (fits) {
        // Newest first: before the first row with a smaller id; a run older
        // than every row of a full list is not shown.
        const after = [...tbody.rows].find((r) => parseInt(r.dataset.run, 10) < id);
        if (!after && tbody.rows.length >= limit) continue;
        tbody.insertBefore(row, after || null);
        const none = document.getElementById("no-runs");
        if (none) none.remove();
        while (tbody.rows.length > limit) tbody.deleteRow(-1);
      }
    }
    busy = false;
  }
  follow("/api/events", (u) => { pending.add(u.run); schedule(); }, () => {
    for (const r of tbody.rows) {
      if (r.dataset.state === "queued" || r.dataset.state === "running") pending.add(parseInt(r.dataset.run, 10));
    }
    schedule();
  });
}

// One run's page: re-rendered by the server while the run is in flight.
function liveRun(box) {
  let timer = null;
  const again = () => {
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      const html = await fragment(location.href);
      if (!html) return;
      const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("run");
      if (!fresh) return;
      box.replaceWith(fresh);
      box = fresh;
      if (fresh.dataset.live !== "run") {
        es.close();
        liveDot(false);
      }
    }, 200);
  };
  const es = follow(`/api/events?runs=${box.dataset.run}`, again, again);
}

// "Start a run": the chosen flow's inputs (defaults filled in) as JSON to
// edit, then POST /api/runs; the live list shows the run.
function startForm(form) {
  const inputs = JSON.parse(document.getElementById("flow-inputs").textContent || "{}");
  const flow = document.getElementById("start-flow");
  const text = document.getElementById("start-input");
  const result = document.getElementById("start-result");
  const fill = () => { text.value = JSON.stringify(inputs[flow.value] || {}, null, 2); };
  flow.addEventListener("change", fill);
  fill();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    result.className = "note";
    let input;
    try {
      input = JSON.parse(text.value || "null");
    } catch (e) {
      result.className = "error";
      result.textContent = `Input is not JSON: ${e.message}`;
      return;
    }
    const resp = await fetch("/api/runs", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ flow: flow.value, input }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      result.className = "error";
      result.textContent = body.error || `The server answered ${resp.status}`;
      return;
    }
    const id = body.runs[0];
    result.innerHTML = "";
    const a = document.createElement("a");
    a.href = `/ui/runs/${id}`;
    a.id = "started-run";
    a.dataset.run = id;
    a.textContent = `Started run ${id}`;
    result.appendChild(a);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const runs = document.querySelector("table[data-live=runs]");
  if (runs) liveRuns(runs);
  const run = document.querySelector("#run[data-live=run]");
  if (run) liveRun(run);
  const form = document.getElementById("start-form");
  if (form) startForm(form);
});
