// The server's HTTP API as the page uses it: GET /limits, GET /indexes, POST /predict/batch?heatmap=png.
// Every failure becomes an ApiError (errors.js); nothing here touches the DOM.

import { ApiError, detailOf, retryAfterSeconds } from "./errors.js";

const KEY_STORAGE = "patchcore.apiKey"; // sessionStorage: forgotten when the tab closes

function storage() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled by the browser's settings: the key lives in memory only
  }
}

export class Api {
  constructor() {
    this.key = (storage() && storage().getItem(KEY_STORAGE)) || "";
  }

  setKey(key) {
    this.key = key.trim();
    const s = storage();
    if (s) this.key ? s.setItem(KEY_STORAGE, this.key) : s.removeItem(KEY_STORAGE);
  }

  async request(path, init = {}) {
    const headers = new Headers(init.headers || {});
    if (this.key) headers.set("X-API-Key", this.key);
    let response;
    try {
      response = await fetch(path, { ...init, headers, cache: "no-store" });
    } catch (exc) {
      throw new ApiError(0, `no answer from the server (${exc.message})`);
    }
    let text = "";
    try {
      text = await response.text();
    } catch (exc) {
      throw new ApiError(0, `the server's answer was cut off (${exc.message})`);
    }
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
    if (!response.ok) {
      const fallback = `HTTP ${response.status} ${response.statusText}`.trim();
      throw new ApiError(response.status, detailOf(body, fallback), retryAfterSeconds(response.headers.get("Retry-After")));
    }
    if (body === null) throw new ApiError(-1, `${path} answered HTTP ${response.status} without JSON`);
    return body;
  }

  limits() {
    return this.request("/limits");
  }

  indexes() {
    return this.request("/indexes");
  }

  // Scores files in one backbone pass; the answer holds one result per file, in order, each with a grey PNG map.
  predictBatch(index, files) {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    const query = new URLSearchParams({ index, heatmap: "png" });
    return this.request(`/predict/batch?${query}`, { method: "POST", body: form });
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Calls fn again after a 503 (busy or still starting), waiting what Retry-After says (at most maxWaitS seconds).
export async function retrying503(fn, { attempts = 3, maxWaitS = 10, onWait = () => {} } = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 503 || attempt >= attempts) throw err;
      const wait = Math.min(err.retryAfter ?? 2, maxWaitS);
      onWait(wait, attempt);
      await sleep(wait * 1000);
    }
  }
}
