// eeserve playground: build progress from /readyz and /v1/models, then /v1/classify with
// return_trace, drawn as one confidence strip per sentence. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], key: sessionStorage.getItem("eeserve-key") || "" };

async function api(path, body) {
  const headers = { "content-type": "application/json" };
  if (state.key) headers.authorization = "Bearer " + state.key;
  const res = await fetch(path, body === undefined ? { headers } :
    { method: "POST", headers, body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) $("key-label").hidden = false;
  return { status: res.status, data };
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---- readiness and build progress ---------------------------------------------------------
async function refresh() {
  let wait = 2000;
  try {
    const [ready, list] = await Promise.all([api("readyz"), api("v1/models")]);
    state.models = list.data.models || [];
    renderStatus(ready.status === 200, state.models);
    fillModels();
    if (ready.status === 200) wait = 15000;
  } catch (e) {
    $("status").textContent = "The server does not answer (" + e + "); retrying.";
  }
  setTimeout(refresh, wait);
}

function renderStatus(ready, models) {
  const box = $("status");
  box.replaceChildren();
  box.classList.toggle("ready", ready);
  if (ready) {
    box.textContent = "Ready: " + models.map((m) => m.name).join(", ");
    return;
  }
  for (const m of models) {
    const row = el("div", "build");
    const build = (m.details || {}).build;
    if (m.ready) {
      row.append(el("b", "", m.name), " serving");
    } else if (build) {
      const verb = { building: "building: ", loading: "", queued: "", failed: "" }[build.state];
      row.append(el("b", "", m.name), " " + (verb ?? "") + build.line);
      if (build.state === "failed") row.classList.add("failed");
      if (build.total) {
        const bar = el("div", "bar"), fill = el("i");
        fill.style.width = Math.round(100 * build.step / build.total) + "%";
        bar.append(fill);
        row.append(bar);
      }
    } else {
      row.append(el("b", "", m.name), " " + (m.error || "not loaded"));
      row.classList.add("failed");
    }
    box.append(row);
  }
  if (!models.length) box.textContent = "No models configured.";
}

function textModels() {
  return state.models.filter((m) => m.kind === "text-classifier");
}

function fillModels() {
  const sel = $("model");
  const current = sel.value;
  const names = textModels().map((m) => m.name + (m.ready ? "" : " (building)")).join("|");
  if (sel.dataset.names === names) return;
  sel.dataset.names = names;
  sel.replaceChildren();
  for (const m of textModels()) {
    const opt = el("option", "", m.ready ? m.name : m.name + " (building)");
    opt.value = m.name;
    opt.disabled = !m.ready;
    sel.append(opt);
  }
  const firstReady = textModels().find((m) => m.ready);
  const fallback = firstReady || textModels()[0];
  sel.value = textModels().some((m) => m.name === current && m.ready) ? current :
    (fallback ? fallback.name : "");
  $("run").disabled = !firstReady;
  $("run").title = firstReady ? "" : "waiting for a model to be built";
  fillPolicies();
}

function fillPolicies() {
  const m = textModels().find((x) => x.name === $("model").value);
  const sel = $("policy");
  const current = sel.value;
  sel.replaceChildren();
  if (!m || !m.ready) return;
  const names = [...new Set([m.default_policy, ...Object.keys(m.policies || {}), "none"])];
  for (const name of names) {
    const opt = el("option", "", name === m.default_policy ? name + " (default)" : name);
    opt.value = name;
    sel.append(opt);
  }
  sel.value = names.includes(current) ? current : m.default_policy;
}

// ---- classification -------------------------------------------------------------------------
async function classify(event) {
  event.preventDefault();
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const error = $("error");
  error.hidden = true;
  if (!texts.length) { showError("Type at least one sentence."); return; }
  let params = {};
  if ($("params").value.trim()) {
    try { params = JSON.parse($("params").value); } catch (e) {
      showError("params: not a JSON object (" + e.message + ")"); return;
    }
  }
  state.key = $("key").value || state.key;
  if (state.key) sessionStorage.setItem("eeserve-key", state.key);
  $("run").disabled = true;
  try {
    const body = { inputs: texts, policy: $("policy").value || undefined,
                   model: $("model").value || undefined, params, return_trace: true };
    const res = await api("v1/classify", body);
    if (res.status !== 200) { showError(res.data.error || "HTTP " + res.status); return; }
    renderResults(texts, res.data);
  } catch (e) {
    showError(String(e));
  } finally {
    $("run").disabled = false;
  }
}

function showError(msg) {
  $("error").textContent = msg;
  $("error").hidden = false;
}

function colour(conf, nLabels) {
  // chance (1/C) -> red, certain -> green
  const floor = 1 / Math.max(2, nLabels);
  const t = Math.max(0, Math.min(1, (conf - floor) / (1 - floor)));
  return `hsl(${Math.round(8 + 122 * t)}, 62%, ${Math.round(80 - 18 * t)}%)`;
}

function renderResults(texts, data) {
  const model = textModels().find((m) => m.name === data.model) || { labels: [] };
  const labels = model.labels || [];
  const box = $("results");
  box.replaceChildren();
  data.results.forEach((r, i) => {
    const card = el("article", "result");
    card.append(el("div", "text", texts[i]));
    const meta = el("div", "meta");
    meta.append(el("span", "label", r.label));
    const exitText = el("span", "exit-layer", `exit ${r.exit_layer} of ${r.num_layers}`);
    meta.append(exitText, el("span", "conf", `confidence ${(100 * r.confidence).toFixed(1)} %`));
    const strip = el("div", "strip");
    strip.setAttribute("aria-label", "confidence per layer");
    const trace = new Map((r.trace || []).map((t) => [t.layer, t]));
    for (let k = 1; k <= r.num_layers; k++) {
      const t = trace.get(k);
      const cell = el("span", "cell");
      cell.dataset.layer = String(k);
      if (t) {
        const name = labels[t.prediction] ?? String(t.prediction);
        cell.textContent = name.slice(0, 1).toUpperCase();
        cell.style.background = colour(t.confidence, labels.length || 2);
        cell.title = `layer ${k}: ${name}, confidence ${(100 * t.confidence).toFixed(1)} %, ` +
          `policy score ${t.score.toFixed(3)}`;
        if (k === r.exit_layer) cell.classList.add("exit");
      } else {
        cell.classList.add("skipped");
        cell.title = `layer ${k}: not computed (the sample had left)`;
      }
      strip.append(cell);
    }
    meta.append(strip);
    card.append(meta);
    if (r.budget_forced || r.truncated) {
      card.append(el("div", "summary", [r.budget_forced ? "the latency budget forced the exit" : "",
        r.truncated ? "text cut to the model's max tokens" : ""].filter(Boolean).join("; ")));
    }
    box.append(card);
  });
  const saved = data.results.reduce((s, r) => s + r.num_layers - r.exit_layer, 0);
  const total = data.results.reduce((s, r) => s + r.num_layers, 0);
  box.append(el("p", "summary", `${data.model} · ${data.policy} · ${saved} of ${total} layers ` +
    `skipped · ${data.timing.total_ms.toFixed(1)} ms on the server`));
  $("legend").hidden = false;
}

$("form").addEventListener("submit", classify);
$("model").addEventListener("change", fillPolicies);
if (state.key) $("key").value = state.key;
refresh();
