// The message area above the results: errors that are not about one file (no product list, wrong key, server down).

import { el } from "./dom.js";

export class Messages {
  constructor(container) {
    this.container = container;
  }

  // described: {status, title, detail, hint}; key: a message with the same key is replaced, not repeated.
  show(described, key = null) {
    this.clear(key);
    const code = described.status > 0 ? ` (HTTP ${described.status})` : "";
    const close = el("button", { type: "button", className: "dismiss", textContent: "×", title: "dismiss" });
    close.setAttribute("aria-label", "dismiss this message");
    const box = el("div", { className: "message", dataset: key ? { key } : {} },
      el("p", { className: "message-title", textContent: described.title + code }),
      described.detail ? el("p", { className: "message-detail", textContent: described.detail }) : null,
      described.hint ? el("p", { className: "message-hint", textContent: described.hint }) : null,
      close);
    close.addEventListener("click", () => box.remove());
    this.container.prepend(box);
    while (this.container.children.length > 5) this.container.lastElementChild.remove();
  }

  clear(key) {
    if (key === null) return;
    for (const box of this.container.querySelectorAll(".message")) {
      if (box.dataset.key === key) box.remove();
    }
  }
}
