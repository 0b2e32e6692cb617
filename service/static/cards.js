// One card per file sent: the picture with its anomaly-map overlay and the facts, or the error that refused it.
// Text from the server or the user (filenames, messages) only ever goes in through textContent.

import { normalised, isAnomalous, paint } from "./colour.js";
import { el } from "./dom.js";

const fmt = (x, digits = 3) => Number(x).toFixed(digits);

function fact(list, label, className) {
  const dd = el("dd", { className });
  list.append(el("dt", { textContent: label }), dd);
  return dd;
}

// The grey levels of the server's map PNG (one byte per pixel, at the picture's size).
async function greyLevels(img) {
  await img.decode();
  const canvas = el("canvas", { width: img.naturalWidth, height: img.naturalHeight });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const grey = new Uint8Array(rgba.length / 4);
  for (let i = 0; i < grey.length; i++) grey[i] = rgba[i * 4];
  return grey;
}

// "#3 name.png": the number is the row of the results table.
function head(item) {
  return el("div", { className: "head" }, el("span", { className: "n", textContent: `#${item.n}` }),
    el("h3", { className: "name", textContent: item.name, title: item.name }));
}

export class ScoredCard {
  // item: {n, name, index, result}; photoUrl: an object URL of the uploaded file.
  constructor(item, photoUrl) {
    const r = item.result;
    this.item = item;
    this.el = el("article", { className: "card", id: `card-${item.n}`, dataset: { n: item.n } });
    const stack = el("div", { className: "stack" });
    stack.style.aspectRatio = `${r.image_width} / ${r.image_height}`;
    this.photo = el("img", { className: "photo", alt: `picture ${item.name}`, decoding: "async" });
    this.heat = el("canvas", { className: "heat", width: r.image_width, height: r.image_height });
    this.heat.setAttribute("role", "img");
    this.heat.setAttribute("aria-label", `anomaly map over ${item.name}`);
    this.raw = el("img", { className: "raw", alt: `raw anomaly map of ${item.name}` });
    stack.append(this.photo, this.heat, this.raw);
    this.note = el("p", { className: "note", hidden: true });
    this.photo.addEventListener("error", () => this._noPhoto());
    this.photo.addEventListener("load", () => this._checkSize());
    this.photo.src = photoUrl;
    this.raw.src = `data:image/png;base64,${r.anomaly_map_png}`;
    this.ready = greyLevels(this.raw).then((grey) => {
      this.heat.width = this.raw.naturalWidth; // the map is at the picture's size (the server's contract)
      this.heat.height = this.raw.naturalHeight;
      this.grey = grey;
    });

    this.decision = el("span", { className: "decision" });
    this.serverNote = el("span", { className: "server-note muted" });
    const facts = el("dl", { className: "facts" });
    this.score = fact(facts, "score", "score num");
    this.threshold = fact(facts, "threshold", "threshold num");
    this.normalised = fact(facts, "normalised", "normalised num");
    fact(facts, "product", "product").textContent = item.index;
    fact(facts, "size", "size").textContent = `${r.image_width} × ${r.image_height} px`;
    this.score.textContent = fmt(r.image_score);
    const t = r.timings_ms;
    const timings = el("p", {
      className: "timings muted",
      textContent: `${fmt(t.total, 0)} ms total · parse ${fmt(t.parse ?? 0, 0)} · decode ${fmt(t.decode, 0)} · ` +
        `backbone ${fmt(t.backbone, 0)} · search ${fmt(t.search, 0)} · map ${fmt(t.map, 0)} · ` +
        `queue ${fmt(t.queue, 0)}`,
    });
    this.el.append(stack, el("div", { className: "body" }, head(item),
      el("p", { className: "verdict" }, this.decision, this.serverNote), facts, timings, this.note));
  }

  _noPhoto() {
    this.el.classList.add("no-photo");
    this.note.hidden = false;
    this.note.textContent = "This browser cannot display this file type; the anomaly map is shown alone.";
  }

  _checkSize() {
    const r = this.item.result;
    if (this.photo.naturalWidth !== r.image_width || this.photo.naturalHeight !== r.image_height) {
      this.note.hidden = false;
      this.note.textContent = `The browser shows this picture at ${this.photo.naturalWidth} × ` +
        `${this.photo.naturalHeight}, the server read it as ${r.image_width} × ${r.image_height}: ` +
        "the overlay is stretched to fit.";
    }
  }

  // Shows the decisions against `whatIf` (the product's what-if threshold) and repaints the overlay with `lut`.
  update(whatIf, std, lut) {
    const r = this.item.result;
    const anomalous = isAnomalous(r.image_score, whatIf);
    const label = anomalous ? "anomalous" : "normal";
    this.decision.textContent = label;
    this.el.dataset.decision = label;
    const changed = whatIf !== r.threshold;
    this.threshold.textContent = fmt(whatIf) + (changed ? ` (what-if; server ${fmt(r.threshold)})` : "");
    const norm = changed && std ? normalised(r.image_score, whatIf, std) : r.normalised_score;
    this.normalised.textContent = fmt(norm) + (changed && std ? ` (server ${fmt(r.normalised_score)})` : "");
    this.serverNote.textContent = anomalous !== r.is_anomalous
      ? ` the server decided ${r.is_anomalous ? "anomalous" : "normal"}` : "";
    if (this.grey && lut) {
      const ctx = this.heat.getContext("2d");
      this.image = this.image || ctx.createImageData(this.heat.width, this.heat.height);
      paint(this.grey, lut, this.image.data);
      ctx.putImageData(this.image, 0, 0);
    }
  }
}

// described: describeError(...) of the refusal.
export function errorCard(item, described) {
  const code = described.status > 0 ? ` (HTTP ${described.status})` : "";
  return el("article", { className: "card error", id: `card-${item.n}`, dataset: { n: item.n, decision: "error" } },
    el("div", { className: "body" },
      head(item),
      el("p", { className: "error-title", textContent: described.title + code }),
      el("p", { className: "error-detail", textContent: described.detail }),
      described.hint ? el("p", { className: "error-hint muted", textContent: described.hint }) : null));
}
