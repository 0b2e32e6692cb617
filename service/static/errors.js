// API answers -> readable messages. Pure (no DOM, no fetch), so the tests call it directly in the browser.
//
// Every error of the server has the body {"detail": "..."} (service/errors.py); FastAPI's own request-validation
// errors carry a list of {loc, msg} instead, and a proxy in between may answer with HTML or nothing at all.

export class ApiError extends Error {
  // status 0: the request never got an answer (server down, connection cut); -1: an answer that is not JSON.
  constructor(status, detail, retryAfter = null) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

export function detailOf(body, fallback) {
  if (body && typeof body === "object") {
    const d = body.detail;
    if (typeof d === "string" && d.trim()) return d;
    if (Array.isArray(d) && d.length) {
      return d.map((e) => {
        if (!e || typeof e !== "object") return String(e);
        const where = Array.isArray(e.loc) ? e.loc.filter((x) => x !== "body" && x !== "query").join(".") : "";
        return where ? `${where}: ${e.msg}` : String(e.msg);
      }).join("; ");
    }
  }
  return fallback;
}

// The Retry-After header in seconds (delta-seconds or an HTTP date), or null.
export function retryAfterSeconds(value, now = Date.now()) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  const s = String(value).trim();
  if (/^\d+$/.test(s)) return Number(s);
  const when = Date.parse(s);
  return Number.isNaN(when) ? null : Math.max(0, Math.round((when - now) / 1000));
}

function mib(bytes) {
  return `${(bytes / 1048576).toFixed(bytes < 1048576 ? 2 : 1)} MiB`;
}

const TITLES = {
  0: "The server could not be reached",
  [-1]: "Unexpected answer from the server",
  400: "Choose a product",
  401: "API key needed",
  403: "Access refused",
  404: "Not found",
  413: "Too large for the server",
  422: "Not a picture the server can read",
  503: "The server is busy or still starting",
};

function hintFor(status, err, limits) {
  switch (status) {
    case 0:
      return "Check that the server is running and reachable. If a large file was being sent, the server may " +
        "have closed the connection because it is over the upload limit.";
    case -1:
      return "Something other than the PatchCore server answered (a proxy or a login page?); reload the page.";
    case 400:
      return "Pick the product in the list above, then send the pictures again.";
    case 401:
      return "Enter the server's API key in the “API key” field above (ask whoever runs the server).";
    case 404:
      return "Reload the page to refresh the product list.";
    case 413:
      return limits
        ? `This server accepts files up to ${mib(limits.max_upload_bytes)}, pictures up to ` +
          `${(limits.max_pixels / 1e6).toFixed(1)} megapixels and ${limits.max_batch_files} files per request.`
        : "Send a smaller picture.";
    case 503:
      return err.retryAfter !== null && err.retryAfter !== undefined
        ? `The server asks to retry in ${err.retryAfter} s; send the pictures again then.`
        : "Retry in a few seconds.";
    default:
      return status >= 500
        ? "This is a fault of the server or of its indexes, not of the picture: the server log has the details."
        : "";
  }
}

// err: an ApiError (or any Error: then it is a fault of the page itself); limits: GET /limits, if known.
// Returns {status, title, detail, hint}: plain strings, to be shown with textContent.
export function describeError(err, limits = null) {
  if (!(err instanceof ApiError)) {
    return {
      status: null, title: "The page hit an unexpected error",
      detail: String((err && err.message) || err), hint: "Reload the page; if it happens again, report it.",
    };
  }
  const status = err.status;
  let title = TITLES[status];
  if (!title) title = status >= 500 ? "Server error" : "Request refused"; // the status code is shown beside it
  if (status === 401 && /wrong/i.test(err.detail || "")) title = "Wrong API key";
  return { status, title, detail: err.detail || "", hint: hintFor(status, err, limits) };
}

// One line, e.g. for the results table and the CSV: "Not a picture the server can read (HTTP 422): ..."
export function errorLine(described) {
  const code = described.status > 0 ? ` (HTTP ${described.status})` : "";
  return `${described.title}${code}: ${described.detail}`;
}
