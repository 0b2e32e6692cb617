// The inspection page: choose a product, send pictures, look at the decisions and the anomaly maps, play with a
// what-if threshold (in the page only: the server's threshold never changes), download the session's results.

import { Api, retrying503 } from "./api.js";
import { ApiError, describeError } from "./errors.js";
import { overlayLut, whatIfRange } from "./colour.js";
import { ScoredCard, errorCard } from "./cards.js";
import { Messages } from "./messages.js";
import { download, fillRow, record, toCsv, toJson } from "./results.js";
import { el } from "./dom.js";

const $ = (id) => document.getElementById(id);
const ui = {
  product: $("product"), productInfo: $("product-info"), serverInfo: $("server-info"), keyForm: $("key-form"),
  key: $("api-key"), files: $("files"), drop: $("drop"), status: $("status"), cards: $("cards"),
  rows: $("results").tBodies[0], count: $("count"), opacity: $("opacity"), rawMap: $("raw-map"),
  whatIf: $("whatif"), whatIfValue: $("whatif-value"), whatIfReset: $("whatif-reset"),
};
const state = {
  api: new Api(), limits: null, products: new Map(), whatIf: new Map(), items: [], next: 1,
  queue: Promise.resolve(), repaint: new Set(), frame: 0,
};
const messages = new Messages($("messages"));
const setStatus = (text) => { ui.status.textContent = text; };

// ---- the server: limits, products, key -------------------------------------------------------------------------

function showKeyForm(focus) {
  ui.keyForm.hidden = false;
  ui.key.value = state.api.key;
  if (focus) ui.key.focus();
}

async function loadLimits() {
  try {
    state.limits = await retrying503(() => state.api.limits(), { attempts: 5 });
    if (state.limits.api_key_required) showKeyForm(false);
  } catch (err) {
    messages.show(describeError(err), "limits");
  }
}

async function loadProducts() {
  ui.product.disabled = true;
  let list;
  try {
    list = await retrying503(() => state.api.indexes(), {
      attempts: 10, onWait: (s) => setStatus(`The server is still starting; asking again in ${s} s…`),
    });
  } catch (err) {
    messages.show(describeError(err, state.limits), "products");
    if (err instanceof ApiError && err.status === 401) showKeyForm(true);
    ui.product.replaceChildren(el("option", { value: "", textContent: "no product list: see the message" }));
    ui.serverInfo.textContent = "not connected";
    return;
  }
  messages.clear("products");
  setStatus("");
  const previous = ui.product.value;
  state.products = new Map(list.map((p) => [p.name, p]));
  ui.product.replaceChildren(...list.map((p) => el("option", { value: p.name, textContent: p.name })));
  if (state.products.has(previous)) ui.product.value = previous;
  ui.product.disabled = list.length === 0;
  const key = state.limits && state.limits.api_key_required ? " · API key accepted" : "";
  ui.serverInfo.textContent = `${list.length} product${list.length === 1 ? "" : "s"}${key}`;
  onProduct();
}

function onProduct() {
  const p = state.products.get(ui.product.value);
  ui.productInfo.textContent = p
    ? `threshold ${p.threshold.toFixed(3)} (good parts over it: ${(100 * p.target_fpr).toFixed(1)} %) · ` +
      `${p.bank_size.toLocaleString("en")} bank vectors from ${p.n_train_images} good pictures · ` +
      `${p.backbone} · built ${p.built_at.slice(0, 10)}`
    : "";
  syncWhatIf();
}

// ---- the what-if threshold --------------------------------------------------------------------------------------

const whatIfOf = (index) => state.whatIf.get(index) ?? null;

function syncWhatIf() {
  const p = state.products.get(ui.product.value);
  ui.whatIf.disabled = !p;
  ui.whatIfReset.disabled = !p || !state.whatIf.has(p.name);
  if (!p) {
    ui.whatIfValue.textContent = "–";
    return;
  }
  const scores = state.items.filter((i) => i.result && i.index === p.name).map((i) => i.result.image_score);
  const [lo, hi] = whatIfRange(p.threshold, p.score_std, scores);
  const value = whatIfOf(p.name) ?? p.threshold;
  Object.assign(ui.whatIf, { min: lo, max: hi, step: (hi - lo) / 1000 });
  ui.whatIf.value = value;
  ui.whatIfValue.textContent = state.whatIf.has(p.name)
    ? `${value.toFixed(3)} (server ${p.threshold.toFixed(3)})` : `${value.toFixed(3)} (server)`;
}

function setWhatIf(index, value) {
  if (value === null) state.whatIf.delete(index);
  else state.whatIf.set(index, value);
  syncWhatIf();
  for (const item of state.items) if (item.index === index) state.repaint.add(item);
  state.frame = state.frame || requestAnimationFrame(repaint);
}

function repaint() {
  state.frame = 0;
  for (const item of state.repaint) showItem(item);
  state.repaint.clear();
  showCounts();
}

// ---- results ----------------------------------------------------------------------------------------------------

function stdOf(index) {
  const p = state.products.get(index);
  return p ? p.score_std : null;
}

function showItem(item) {
  const whatIf = whatIfOf(item.index);
  if (item.card) {
    const r = item.result;
    const t = whatIf ?? r.threshold;
    const std = stdOf(item.index);
    item.card.update(t, std, std ? overlayLut(r.threshold, t, std) : null);
  }
  fillRow(item.row, record(item, whatIf, stdOf(item.index)));
}

function showCounts() {
  const recs = state.items.map((i) => record(i, whatIfOf(i.index), stdOf(i.index)));
  const n = (what) => recs.filter((r) => (r.what_if_decision ?? r.status) === what).length;
  ui.count.textContent = recs.length
    ? `(${recs.length}: ${n("anomalous")} anomalous, ${n("normal")} normal, ${n("error")} refused)` : "";
  for (const id of ["csv", "json", "clear"]) $(id).disabled = recs.length === 0;
}

function addItem(item) {
  state.items.push(item);
  item.row = el("tr", { id: `row-${item.n}` });
  item.row.addEventListener("click", () => $(`card-${item.n}`)?.scrollIntoView({ block: "nearest" }));
  ui.rows.append(item.row);
  showItem(item);
  showCounts();
}

function succeed(item, result) {
  item.result = result;
  item.url = URL.createObjectURL(item.file);
  item.card = new ScoredCard(item, item.url);
  ui.cards.append(item.card.el);
  addItem(item);
  item.card.ready.then(() => showItem(item), (exc) => messages.show(describeError(exc)));
  if (item.index === ui.product.value) syncWhatIf();
}

function fail(item, err) {
  item.error = describeError(err, state.limits);
  ui.cards.append(errorCard(item, item.error));
  addItem(item);
}

// ---- sending pictures -------------------------------------------------------------------------------------------

async function scoreChunk(items, index) {
  try {
    const answer = await retrying503(() => state.api.predictBatch(index, items.map((i) => i.file)), {
      onWait: (s) => setStatus(`The server is busy; sending again in ${s} s…`),
    });
    answer.results.forEach((result, k) => succeed(items[k], result));
  } catch (err) {
    const aboutAFile = err instanceof ApiError && (err.status === 422 || err.status === 413);
    if (aboutAFile && items.length > 1) {
      for (const item of items) await scoreChunk([item], index); // find the bad one, score the others
      return;
    }
    for (const item of items) fail(item, err);
    if (!aboutAFile) messages.show(describeError(err, state.limits), "send");
    if (err instanceof ApiError && err.status === 401) showKeyForm(true);
  }
}

async function scoreFiles(files, index) {
  const started = performance.now();
  const items = files.map((file) => ({
    n: state.next++, name: file.name || "pasted picture", bytes: file.size, index, file, result: null,
    error: null, at: new Date().toISOString(),
  }));
  const limit = state.limits ? state.limits.max_upload_bytes : Infinity;
  for (const item of items.filter((i) => i.bytes > limit)) {
    fail(item, new ApiError(413, `${item.name} is ${item.bytes} bytes, over this server's limit of ${limit} ` +
      "bytes per file; it was not sent"));
  }
  const toSend = items.filter((i) => i.bytes <= limit);
  const per = state.limits ? state.limits.max_batch_files : 8;
  for (let k = 0; k < toSend.length; k += per) {
    setStatus(`Scoring pictures ${k + 1}–${Math.min(k + per, toSend.length)} of ${toSend.length}…`);
    await scoreChunk(toSend.slice(k, k + per), index);
  }
  const refused = items.filter((i) => i.error).length;
  setStatus(`${items.length - refused} of ${items.length} scored in ${((performance.now() - started) / 1000).toFixed(1)} s` +
    (refused ? `; ${refused} refused (see the red cards)` : ""));
}

function submit(fileList) {
  const files = [...fileList];
  if (files.length === 0) return;
  const index = ui.product.value;
  if (!index) {
    messages.show({ status: null, title: "Choose a product first",
      detail: "No product is selected: the server's product list has not been loaded.",
      hint: "Fix the problem shown above (often the API key), then send the pictures again." }, "send");
    return;
  }
  messages.clear("send");
  state.queue = state.queue.then(() => scoreFiles(files, index)).catch((exc) => messages.show(describeError(exc)));
}

// ---- wiring -----------------------------------------------------------------------------------------------------

function stamp() {
  return new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
}

function records() {
  return state.items.map((i) => record(i, whatIfOf(i.index), stdOf(i.index)));
}

function wire() {
  $("choose").addEventListener("click", () => ui.files.click());
  ui.files.addEventListener("change", () => { submit(ui.files.files); ui.files.value = ""; });
  document.addEventListener("dragover", (e) => { e.preventDefault(); ui.drop.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) ui.drop.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault(); // never let the browser navigate away to the dropped file
    ui.drop.classList.remove("dragging");
    if (e.dataTransfer) submit(e.dataTransfer.files);
  });
  document.addEventListener("paste", (e) => {
    const files = e.clipboardData ? [...e.clipboardData.files] : [];
    if (files.length) { e.preventDefault(); submit(files); }
  });
  ui.keyForm.addEventListener("submit", (e) => { e.preventDefault(); state.api.setKey(ui.key.value); loadProducts(); });
  ui.product.addEventListener("change", onProduct);
  ui.opacity.addEventListener("input", () => ui.cards.style.setProperty("--heat-opacity", ui.opacity.value / 100));
  ui.rawMap.addEventListener("change", () => ui.cards.classList.toggle("show-raw", ui.rawMap.checked));
  ui.whatIf.addEventListener("input", () => setWhatIf(ui.product.value, Number(ui.whatIf.value)));
  ui.whatIfReset.addEventListener("click", () => setWhatIf(ui.product.value, null));
  $("csv").addEventListener("click", () => download(toCsv(records()), `patchcore-results-${stamp()}.csv`, "text/csv"));
  $("json").addEventListener("click", () => download(toJson(records(), {
    exported_at: new Date().toISOString(), server: location.origin, products: Object.fromEntries(state.products),
  }), `patchcore-results-${stamp()}.json`, "application/json"));
  $("clear").addEventListener("click", () => {
    for (const item of state.items) if (item.url) URL.revokeObjectURL(item.url);
    state.items = [];
    state.next = 1;
    state.whatIf.clear(); // a new session starts from the server's thresholds
    ui.cards.replaceChildren();
    ui.rows.replaceChildren();
    showCounts();
    syncWhatIf();
  });
  window.addEventListener("error", (e) => messages.show(describeError(e.error || e.message)));
  window.addEventListener("unhandledrejection", (e) => messages.show(describeError(e.reason)));
}

wire();
ui.cards.style.setProperty("--heat-opacity", ui.opacity.value / 100);
loadLimits().then(loadProducts);
