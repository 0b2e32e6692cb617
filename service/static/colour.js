// Scores and colours, pure math. The colour scale is imaging/render.py's (_ANCHORS), so a map drawn here looks
// like the server's overlays; tests check the two agree.
//
// The server's map PNG holds g = round(255 * v) with v = sigmoid((s - threshold) / std) per pixel (128 = the
// threshold). Against a what-if threshold t the same pixel is sigmoid(logit(v) + (threshold - t) / std): a function
// of g alone, so recolouring a map is one 256-entry lookup table.

export const ANCHORS = [[0, 0, 96], [0, 64, 255], [0, 224, 255], [255, 255, 0], [255, 96, 0], [200, 0, 0]];

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

// v in [0, 1] -> [r, g, b], as render.colorize.
export function colourOf(v) {
  const x = clamp(v, 0, 1) * (ANCHORS.length - 1);
  const lo = Math.min(Math.floor(x), ANCHORS.length - 2);
  const f = x - lo;
  return ANCHORS[lo].map((a, i) => Math.trunc(a * (1 - f) + ANCHORS[lo + 1][i] * f));
}

// The normalised score of `score` against `threshold` (0.5 there), as model/scoring.normalise.
export function normalised(score, threshold, std) {
  return 1 / (1 + Math.exp(-(score - threshold) / std));
}

export function isAnomalous(score, threshold) {
  return score >= threshold; // model/scoring.is_anomalous
}

// Grey level -> RGBA of the overlay drawn for a what-if threshold: colour from the shifted value, opacity rising with
// it (render.overlay's weight: faint below the threshold, full above). 4 bytes per grey level.
export function overlayLut(serverThreshold, whatIf, std) {
  const lut = new Uint8ClampedArray(256 * 4);
  const shift = (serverThreshold - whatIf) / std;
  for (let g = 0; g < 256; g++) {
    const v = clamp(g / 255, 0.5 / 255, 254.5 / 255); // the PNG's 8 bits cannot say more than this
    const shifted = 1 / (1 + Math.exp(-(Math.log(v / (1 - v)) + shift)));
    const [r, gr, b] = colourOf(shifted);
    lut.set([r, gr, b, Math.round(255 * clamp(shifted * 1.5, 0.25, 1))], g * 4);
  }
  return lut;
}

// grey: Uint8Array of grey levels (one per pixel); out: ImageData.data of the same pixel count.
export function paint(grey, lut, out) {
  for (let i = 0, j = 0; i < grey.length; i++, j += 4) {
    const k = grey[i] * 4;
    out[j] = lut[k];
    out[j + 1] = lut[k + 1];
    out[j + 2] = lut[k + 2];
    out[j + 3] = lut[k + 3];
  }
}

// Slider bounds for a product: its threshold +- 4 std, widened to every score seen, never below 0.
export function whatIfRange(threshold, std, scores) {
  let lo = Math.max(0, threshold - 4 * std);
  let hi = threshold + 4 * std;
  for (const s of scores) {
    lo = Math.min(lo, s);
    hi = Math.max(hi, s);
  }
  const pad = (hi - lo) * 0.02 || 1e-3;
  return [Math.max(0, lo - pad), hi + pad];
}
