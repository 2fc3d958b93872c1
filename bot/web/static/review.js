// The review page's small script: forms without reloads, keyboard review, a live diff of
// an edited answer, and training progress from server-sent events. Every form also works
// without it (plain posts that come back to the page); the server checks everything.
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

function toast(text, isError) {
  const box = document.getElementById("toast");
  if (!box) return;
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, isError ? 8000 : 3000);
}

function setCounts(counts) {
  for (const [name, value] of Object.entries(counts || {})) {
    document.querySelectorAll(`[data-count="${name}"]`).forEach((el) => {
      el.textContent = String(value);
    });
  }
}

// --- forms: confirm, then post with the CSRF header and read the JSON answer -----------

async function postForm(form, submitter) {
  const body = new URLSearchParams(new FormData(form, submitter));
  const response = await fetch(form.action, {
    method: "POST",
    body,
    headers: { "Accept": "application/json", "X-CSRF-Token": csrfToken() },
    credentials: "same-origin",
  });
  let payload = {};
  try { payload = await response.json(); } catch (err) { payload = {}; }
  if (!response.ok) throw new Error(payload.error || `the server answered ${response.status}`);
  return payload;
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  const question = form.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  if (!("ajax" in form.dataset)) return; // a plain post: the page reloads
  event.preventDefault();
  try {
    const payload = await postForm(form, event.submitter);
    afterAction(payload);
  } catch (err) {
    toast(err.message, true);
  }
});

function afterAction(payload) {
  if (!payload.done) { window.location.reload(); return; }
  const listed = document.querySelector('[data-count="listed"]');
  for (const id of payload.done) {
    const row = document.getElementById(`pair-${id}`);
    if (!row) continue;
    if (row === current) move(1) || move(-1);
    row.remove();
    if (listed) listed.textContent = String(Math.max(0, Number(listed.textContent) - 1));
  }
  if (current && !current.isConnected) current = null;
  if (!current) focusRow(rows()[0]);
  setCounts(payload.counts);
  updatePicked();
  const verb = { approved: "Approved", rejected: "Rejected", pending: "Back to pending:" }[payload.status];
  toast(`${verb || "Done:"} ${payload.done.length === 1 ? "pair " + payload.done[0] : payload.done.length + " pairs"}`);
}

// --- selection --------------------------------------------------------------------------

function updatePicked() {
  const label = document.getElementById("picked");
  if (label) label.textContent = `${document.querySelectorAll(".pick:checked").length} selected`;
}

document.addEventListener("change", (event) => {
  if (event.target.id === "pick-all") {
    document.querySelectorAll(".pick").forEach((box) => { box.checked = event.target.checked; });
  }
  if (event.target.matches(".pick, #pick-all")) updatePicked();
});

// --- keyboard review: j/k move, a approve, r reject, e edit, x select -------------------

let current = null;
const rows = () => Array.from(document.querySelectorAll("#pairs .pair"));

function focusRow(row) {
  if (current) current.classList.remove("current");
  current = row || null;
  if (!current) return;
  current.classList.add("current");
  current.scrollIntoView({ block: "nearest" });
}

function move(step) {
  const all = rows();
  if (!all.length) return false;
  const next = all[all.indexOf(current) + step];
  if (current && !next) return false;
  focusRow(next || all[0]);
  return true;
}

function clickIn(row, selector) {
  const button = row && row.querySelector(selector);
  if (button) button.click();
}

function openEditor(row) {
  const details = row.querySelector("details.edit");
  if (!details) return;
  details.open = true;
  const area = details.querySelector("textarea");
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
  showDiff(area);
}

document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (target.matches && target.matches("textarea")) {
    if (event.key === "Escape") {
      const details = target.closest("details");
      if (details) details.open = false;
      target.blur();
    } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      target.form.requestSubmit();
    }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (target.matches && target.matches("input, select, textarea, [contenteditable]")) return;
  if (!document.getElementById("pairs")) return;
  const key = event.key;
  if (key === "j" || key === "k") {
    move(key === "j" ? 1 : -1);
  } else if (!current) {
    return;
  } else if (key === "a") {
    clickIn(current, 'form.decide button[value="approved"], form.decide button.approve');
  } else if (key === "r") {
    clickIn(current, 'form.decide button[value="rejected"], form.decide button.reject');
  } else if (key === "e") {
    openEditor(current);
  } else if (key === "x") {
    const box = current.querySelector(".pick");
    if (box) { box.checked = !box.checked; updatePicked(); }
  } else {
    return;
  }
  event.preventDefault();
});

document.addEventListener("click", (event) => {
  const row = event.target.closest && event.target.closest("#pairs .pair");
  if (row && row !== current) focusRow(row);
});

// --- the diff of an edited answer against the bot's original ----------------------------

const words = (text) => text.match(/\s+|\S+/g) || [];

function wordDiff(before, after) {
  const a = words(before);
  const b = words(after);
  if (a.length * b.length > 4000000) return [["del", before], ["ins", after]];
  const n = a.length;
  const m = b.length;
  const lcs = new Uint32Array((n + 1) * (m + 1)); // lcs[i][j]: common words of a[i:], b[j:]
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      lcs[i * (m + 1) + j] = a[i] === b[j] ? lcs[(i + 1) * (m + 1) + j + 1] + 1
        : Math.max(lcs[(i + 1) * (m + 1) + j], lcs[i * (m + 1) + j + 1]);
    }
  }
  const runs = [];
  const push = (kind, text) => {
    const last = runs[runs.length - 1];
    if (last && last[0] === kind) last[1] += text; else runs.push([kind, text]);
  };
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { push("same", a[i]); i += 1; j += 1; }
    else if (lcs[(i + 1) * (m + 1) + j] >= lcs[i * (m + 1) + j + 1]) { push("del", a[i]); i += 1; }
    else { push("ins", b[j]); j += 1; }
  }
  while (i < n) { push("del", a[i]); i += 1; }
  while (j < m) { push("ins", b[j]); j += 1; }
  return runs;
}

function showDiff(area) {
  const row = area.closest(".pair");
  const out = row && row.querySelector(".diff");
  const original = row && row.querySelector(".original");
  if (!out || !original) return;
  out.replaceChildren();
  const runs = wordDiff(original.textContent, area.value);
  if (runs.every(([kind]) => kind === "same")) {
    out.textContent = "unchanged from the bot's answer";
    return;
  }
  for (const [kind, text] of runs) {
    const node = kind === "same" ? document.createTextNode(text)
      : Object.assign(document.createElement(kind), { textContent: text });
    out.append(node);
  }
}

document.addEventListener("input", (event) => {
  if (event.target.matches("details.edit textarea[name=edited_answer]")) showDiff(event.target);
});
document.addEventListener("toggle", (event) => {
  if (event.target.matches && event.target.matches("details.edit") && event.target.open) {
    const row = event.target.closest(".pair");
    if (row) focusRow(row);
    showDiff(event.target.querySelector("textarea"));
  }
}, true);

// --- training progress ----------------------------------------------------------------

function describe(event) {
  const number = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : value);
  switch (event.event) {
    case "start": return `started: ${event.steps} steps on ${event.examples} examples`;
    case "step": return `step ${event.step}/${event.total} · loss ${number(event.loss, 4)}` +
      (event.tokens_per_s ? ` · ${Math.round(event.tokens_per_s)} tokens/s` : "");
    case "eval": return `validation at step ${event.step}: loss ${number(event.loss, 4)}`;
    case "checkpoint": return `checkpoint at step ${event.step}`;
    case "done": return `v${event.version} written`;
    case "gate": return `gate: ${event.reason}`;
    case "error": return `error: ${event.message}`;
    default: return event.event || "event";
  }
}

function followRun(panel) {
  const bar = panel.querySelector("progress");
  const now = panel.querySelector(".now");
  const list = panel.querySelector(".events");
  const source = new EventSource(panel.dataset.events);
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.event === "step" && event.total) {
      bar.max = event.total;
      bar.value = event.step;
    }
    now.textContent = describe(event);
    if (event.event !== "step") {
      const item = document.createElement("li");
      item.textContent = describe(event);
      list.append(item);
    }
  };
  source.addEventListener("end", (message) => {
    const end = JSON.parse(message.data);
    source.close();
    if (end.status === "succeeded") bar.value = bar.max;
    now.textContent = `run ${end.status}` + (end.version ? `: v${end.version}` : "") +
      (end.error ? ` — ${end.error}` : "");
    panel.classList.add("ended");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-events]").forEach(followRun);
  if (document.getElementById("pairs")) focusRow(rows()[0]);
});
