"""How to score good training images for calibration, and which threshold rule: measured on the development suite
and by simulation on known distributions.

    python bench/experiment_calibration.py                  # suite: scores and rules, default feature settings
    python bench/experiment_calibration.py --kfold          # also the (slow) 5-fold coreset rebuild
    python bench/experiment_calibration.py --simulate-only  # the rules on known distributions

Part 1, scores. Every training image goes into the memory bank; each is then scored as if it had been left out:
  - "leave-out": its own bank vectors skipped;
  - "leave-out + refill" (the builder's): its own bank vectors skipped and the holes refilled (model.leave_out);
  - "5-fold rebuild": the coreset rebuilt without the image's fold (same bank size), the truth being approximated.
Each is compared with the scores of the test set's good images (never seen by the bank): mean, median, 90 % and max.

Part 2, rules. For each score source and rule (model.calibration.RULES), the threshold at the target FPR and what it
does on the test set: realised FPR on good images, recall, the oracle recall (best recall any threshold reaches at
FPR <= target) and F1. The bar of the issue: realised FPR <= max(3 x target, 1 / n_good) and recall >= oracle - 0.05.

Part 3, simulation. n scores drawn from a known distribution, the rule's threshold, its exact exceedance probability
(the false-positive rate a new good part meets), averaged over many draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import suite  # noqa: E402

from evaluation import metrics  # noqa: E402
from model import knn  # noqa: E402
from model.calibration import RULES, calibrate  # noqa: E402
from model.coreset import greedy_coreset  # noqa: E402
from model.leave_out import LeaveOneOut  # noqa: E402

DISTRIBUTIONS = {  # name -> frozen scipy distribution of good-image scores
    "normal": stats.norm(2.5, 0.2),
    "gumbel (max of patches)": stats.gumbel_r(2.4, 0.12),
    "lognormal": stats.lognorm(0.25, scale=2.5),
    "student t3 (heavy)": stats.t(3, 2.5, 0.15),
    "normal + 5% outliers": None,  # a mixture, sampled below
}


def leave_out_scores(tr: np.ndarray, bank: suite.Bank, refill: bool, reweight: int | None) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    n, h, w, d = tr.shape
    bank_vectors = knn.reconstruct(bank.detector.index, np.arange(bank.detector.index.ntotal))
    loo = LeaveOneOut(bank.detector.index, bank_vectors, bank.image_ids, tr.reshape(-1, d),
                      np.repeat(np.arange(n), h * w))
    ids = np.arange(n)
    if refill:
        scores = loo.image_scores(ids, reweight)
    else:
        empty = np.empty((0, d), np.float32)
        scores = np.array([loo.image_score(i, empty, reweight) for i in ids])
    return scores, time.perf_counter() - t


def kfold_scores(tr: np.ndarray, bank: suite.Bank, config, folds: int = 5) -> np.ndarray:
    n, h, w, d = tr.shape
    out = np.empty(n)
    k = bank.detector.index.ntotal
    for fold in np.array_split(np.random.default_rng(0).permutation(n), folds):
        keep = np.setdiff1d(np.arange(n), fold)
        rows = tr[keep].reshape(-1, d)
        picked = greedy_coreset(rows, k, projection_dim=config.projection_dim, seed=config.seed)
        fold_bank = suite.Bank(suite.detector_for(rows[picked], config), None, 0.0)
        out[fold], _ = suite.image_scores(fold_bank, tr[fold])
    return out


def rule_rows(name: str, source: str, cal: np.ndarray, labels: np.ndarray, test: np.ndarray, fpr: float) -> list:
    rows = []
    n_good = int((labels == 0).sum())
    oracle = metrics.oracle_recall_at_fpr(labels, test, fpr)
    for rule in RULES:
        c = calibrate(cal, fpr, rule)
        realised, recall = metrics.rates_at_threshold(labels, test, c.threshold)
        ok = realised <= max(3 * fpr, 1 / n_good) + 1e-9 and recall >= oracle - 0.05 - 1e-9
        rows.append(dict(product=name, source=source, rule=rule, threshold=round(c.threshold, 4),
                         realised_fpr=round(realised, 3), recall=round(recall, 3), oracle_recall=round(oracle, 3),
                         f1=round(metrics.f1_at_threshold(labels, test, c.threshold), 3), meets_bar=ok))
    return rows


def simulate(n_values=(20, 30, 50, 100, 200), fpr: float = 0.01, reps: int = 4000, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for dist_name, dist in DISTRIBUTIONS.items():
        for n in n_values:
            for rule in RULES:
                exceed = []
                for _ in range(reps if rule != "gpd" else reps // 8):
                    if dist is None:
                        x = np.where(rng.random(n) < 0.05, rng.normal(3.2, 0.3, n), rng.normal(2.5, 0.2, n))
                    else:
                        x = dist.rvs(size=n, random_state=rng)
                    t = calibrate(x, fpr, rule).threshold
                    exceed.append(_tail(dist, t))
                rows.append(dict(distribution=dist_name, n=n, rule=rule, expected_fpr=round(float(np.mean(exceed)), 4)))
    return rows


def _tail(dist, t: float) -> float:
    if dist is None:
        return 0.95 * stats.norm(2.5, 0.2).sf(t) + 0.05 * stats.norm(3.2, 0.3).sf(t)
    return float(dist.sf(t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", nargs="+", default=list(suite.PRODUCTS))
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--kfold", action="store_true", help="also the 5-fold coreset rebuild (slow)")
    parser.add_argument("--simulate-only", action="store_true")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    common.setup_threads(args.threads)
    features = suite.Features()  # the defaults
    config = features.config()
    score_rows, rules, sims = [], [], []
    if not args.simulate_only:
        for name in args.products:
            cat = suite.load_product(name)
            tr, _ = suite.embed(list(cat.train), features)
            te, _ = suite.embed([s.image_path for s in cat.test], features)
            labels = np.array([s.label for s in cat.test])
            bank = suite.build_bank(tr, config, config.coreset_ratio)
            test, _ = suite.image_scores(bank, te)
            rw = config.num_neighbors if config.reweight else None
            sources = {"test good (truth)": (test[labels == 0], 0.0)}
            sources["leave-out"] = leave_out_scores(tr, bank, False, rw)
            sources["leave-out + refill"] = leave_out_scores(tr, bank, True, rw)
            if args.kfold:
                t = time.perf_counter()
                sources["5-fold rebuild"] = (kfold_scores(tr, bank, config), time.perf_counter() - t)
            for source, (s, seconds) in sources.items():
                q = np.quantile(s, [0.5, 0.9, 1.0])
                score_rows.append(dict(product=name, source=source, n=len(s), mean=round(float(s.mean()), 3),
                                       median=round(q[0], 3), q90=round(q[1], 3), max=round(q[2], 3),
                                       seconds=round(seconds, 2)))
                if source != "test good (truth)":
                    rules.extend(rule_rows(name, source, s, labels, test, args.target_fpr))
        print(common.table(score_rows, title="Good-image scores: calibration sources against the test set's good images"))
        print(common.table(rules, title=f"Threshold rules at target FPR {args.target_fpr}"))
    sims = simulate(fpr=args.target_fpr)
    print(common.table(sims, title=f"Simulation: expected FPR of each rule at target {args.target_fpr}"))
    common.write_json("experiment_calibration", {"scores": score_rows, "rules": rules, "simulation": sims,
                                                       "machine": common.machine()})


if __name__ == "__main__":
    main()
