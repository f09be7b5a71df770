"""Coverage of the evaluator's DeLong 95% AUC interval by the number of clicks behind it: the
measurement behind gate.min_clicks. Binormal scores (true AUC 0.70), 2,000 non-clicks, 400
draws per click count. Then the gate's paired difference (uncertainty.PairedAuc, binned on its
logit grid) of two alike models of equal AUC: how often its interval holds the true difference
0, and how wide it is against the unpaired one. Writes benchmarks/results/delong_coverage.md;
runs in a minute."""

from __future__ import annotations

import math
import os

import numpy as np

from ecdctr.evaluation.evaluator import GroupedAuc, auc_from_counts
from ecdctr.evaluation.uncertainty import Z95, PairedAuc, delong_variance

TRUE_AUC = 0.70
SEPARATION = 0.5244005 * math.sqrt(2)  # binormal: AUC = Phi(separation / sqrt 2) = 0.70
NON_CLICKS = 2000
DRAWS = 400
OUT = os.path.join(os.path.dirname(__file__), "results", "delong_coverage.md")


def coverage(clicks: int, rng: np.random.Generator) -> tuple[float, float]:
    """(share of draws whose interval holds the true AUC, median half-width)."""
    covered, widths = 0, []
    for _ in range(DRAWS):
        scores = np.r_[rng.normal(SEPARATION, 1, clicks), rng.normal(0, 1, NON_CLICKS)]
        labels = np.r_[np.ones(clicks), np.zeros(NON_CLICKS)]
        counter = GroupedAuc()
        counter.add(np.zeros(len(labels), np.int64), scores.astype(np.float32), labels)
        c = counter.counts()
        area = auc_from_counts(c["clicks"], c["non_clicks"], c["u2"])[0]
        half = Z95 * math.sqrt(delong_variance(c["clicks"], c["non_clicks"], c["u2"],
                                               c["click_squares"], c["non_click_squares"])[0])
        covered += area - half <= TRUE_AUC <= area + half
        widths.append(half)
    return covered / DRAWS, float(np.median(widths))


def paired_coverage(clicks: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """(share of draws whose paired interval holds 0, median paired half-width, median
    unpaired half-width) for two models sharing most of their signal, equal true AUC."""
    covered, paired_widths, unpaired_widths = 0, [], []
    labels = np.r_[np.ones(clicks), np.zeros(NON_CLICKS)]
    for _ in range(DRAWS // 2):
        common = rng.normal(size=len(labels)) + SEPARATION * labels
        scores = [common * 0.9 + 0.45 * rng.normal(size=len(labels)) for _ in range(2)]
        probs = [1 / (1 + np.exp(-(-3.0 + 0.8 * x))) for x in scores]  # CTR-like logits
        pair = PairedAuc()
        pair.add(labels, probs[0], probs[1])
        out = pair.result()
        half = Z95 * math.sqrt(out["difference_variance"])
        covered += abs(out["auc_difference"]) <= half
        paired_widths.append(half)
        alone = 0.0
        for p in probs:
            counter = GroupedAuc()
            counter.add(np.zeros(len(labels), np.int64), p.astype(np.float32), labels)
            c = counter.counts()
            alone += delong_variance(c["clicks"], c["non_clicks"], c["u2"], c["click_squares"],
                                     c["non_click_squares"])[0]
        unpaired_widths.append(Z95 * math.sqrt(alone))
    return (covered / (DRAWS // 2), float(np.median(paired_widths)),
            float(np.median(unpaired_widths)))


def main() -> None:
    rng = np.random.default_rng(0)
    lines = ["DeLong 95% interval of AUC: coverage by clicks (binormal scores, true AUC 0.70, "
             f"{NON_CLICKS:,} non-clicks, {DRAWS} draws each; Monte Carlo error about ±1.2%).",
             "", "| clicks | coverage | median half-width |", "|---|---|---|"]
    for clicks in (5, 10, 20, 30, 50, 100):
        share, half = coverage(clicks, rng)
        lines.append(f"| {clicks} | {share:.1%} | {half:.3f} |")
    lines += ["", "Paired difference of two alike models of equal AUC (the gate's PairedAuc on its "
              f"logit grid; {DRAWS // 2} draws each): coverage of the true difference 0.", "",
              "| clicks | coverage | median paired half-width | median unpaired half-width |",
              "|---|---|---|---|"]
    for clicks in (30, 100, 500):
        share, paired, unpaired = paired_coverage(clicks, rng)
        lines.append(f"| {clicks} | {share:.1%} | {paired:.3f} | {unpaired:.3f} |")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
