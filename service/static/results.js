// The session's results: one record per file sent (scored or refused), as table rows, CSV and JSON.

import { errorLine } from "./errors.js";
import { isAnomalous, normalised } from "./colour.js";

export const COLUMNS = [
  "n", "file", "bytes", "product", "status", "image_score", "normalised_score", "threshold", "decision",
  "what_if_threshold", "what_if_normalised_score", "what_if_decision", "width", "height", "ms_total", "ms_decode",
  "ms_preprocess", "ms_backbone", "ms_search", "ms_map", "ms_parse", "ms_serialise", "scored_at", "error",
];

// item: {n, name, bytes, index, result | null, error | null, at}; whatIf: the product's what-if threshold;
// std: the product's score_std (null when unknown, then no what-if normalised score).
export function record(item, whatIf, std) {
  const base = { n: item.n, file: item.name, bytes: item.bytes, product: item.index, scored_at: item.at };
  if (item.error) return { ...base, status: "error", error: errorLine(item.error) };
  const r = item.result;
  const t = r.timings_ms;
  const threshold = whatIf ?? r.threshold;
  return {
    ...base, status: "scored", image_score: r.image_score, normalised_score: r.normalised_score,
    threshold: r.threshold, decision: r.is_anomalous ? "anomalous" : "normal", what_if_threshold: threshold,
    what_if_normalised_score: std ? normalised(r.image_score, threshold, std) : null,
    what_if_decision: isAnomalous(r.image_score, threshold) ? "anomalous" : "normal",
    width: r.image_width, height: r.image_height, ms_total: t.total, ms_decode: t.decode,
    ms_preprocess: t.preprocess, ms_backbone: t.backbone, ms_search: t.search, ms_map: t.map,
    ms_parse: t.parse ?? null, ms_serialise: t.serialise ?? null,
  };
}

// A CSV cell: quoted when needed; a leading = + - @ is escaped so a spreadsheet never runs a filename as a formula.
export function csvCell(value) {
  if (value === null || value === undefined) return "";
  let s = String(value);
  if (typeof value !== "number" && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCsv(records) {
  const lines = [COLUMNS.join(",")];
  for (const rec of records) lines.push(COLUMNS.map((c) => csvCell(rec[c])).join(","));
  return lines.join("\r\n") + "\r\n";
}

export function toJson(records, context) {
  return JSON.stringify({ ...context, results: records }, null, 2);
}

const fixed = (x, digits) => (typeof x === "number" ? x.toFixed(digits) : "–");

function cell(tr, text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  tr.append(td);
  return td;
}

// Fills tr (a <tr>) with the record's cells; the columns of index.html's <thead>.
export function fillRow(tr, rec) {
  tr.replaceChildren();
  tr.dataset.status = rec.status;
  cell(tr, String(rec.n));
  cell(tr, rec.file, "file").title = rec.file;
  cell(tr, rec.product);
  if (rec.status === "error") {
    const td = cell(tr, rec.error, "error-text");
    td.colSpan = 6;
    tr.dataset.decision = "error";
    return;
  }
  cell(tr, fixed(rec.image_score, 3), "num");
  cell(tr, fixed(rec.what_if_normalised_score ?? rec.normalised_score, 3), "num");
  const changed = rec.what_if_threshold !== rec.threshold;
  cell(tr, fixed(rec.what_if_threshold, 3) + (changed ? " (what-if)" : ""), "num");
  const d = cell(tr, rec.what_if_decision, `decision ${rec.what_if_decision}`);
  if (rec.what_if_decision !== rec.decision) d.title = `the server decided: ${rec.decision}`;
  tr.dataset.decision = rec.what_if_decision;
  cell(tr, `${rec.width}×${rec.height}`);
  cell(tr, fixed(rec.ms_total, 0), "num");
}

// Saves text as a file through the browser's download.
export function download(text, filename, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
