"""The primary analysis holds its 95% on simulated NULL studies (issue 37): stats.paired_t's interval at 3, 5 and
12 training seeds and seed spreads 0 to 0.75 (logit), with the episode heterogeneity calibrated on the ablation's
recorded none arms; and the pooled estimate across tasks at the committed study's design. 2000 studies per cell
(Monte Carlo SE about 0.5%, the band [93%, 97%] is +-4 SE); seeded, vectorised: a few seconds in all.

The old stats.hierarchical_bootstrap fails the same check (`python stats.py coverage --method bootstrap
--studies 300`: docs/findings.md), so the check can fail."""
import json

import numpy as np
import pytest

from conftest import ROOT  # noqa: F401  (puts the project on the path)
import stats  # noqa: E402

CELLS = [(S, sd) for S in stats.COVERAGE_SEEDS for sd in stats.COVERAGE_SPREADS]


@pytest.mark.parametrize("seeds,seed_sd", CELLS)
def test_primary_interval_covers_95_on_null_studies(seeds, seed_sd):
    cov = stats.null_coverage(stats.primary_interval, seeds, seed_sd, studies=2000, seed=seeds * 100 + int(seed_sd * 4))
    assert 0.93 <= cov <= 0.97, f"{seeds} seeds, spread {seed_sd}: coverage {cov:.3f}"


@pytest.mark.parametrize("ease_sd", [1.1, 2.7])  # the tasks' own fits span 1.1 (franka_put_in_bin) to 2.7 (lift_block)
def test_primary_interval_covers_at_the_tasks_heterogeneity(ease_sd):
    for S in (3, 5):
        cov = stats.null_coverage(stats.primary_interval, S, 0.5, studies=2000, ease_sd=ease_sd, seed=S)
        assert 0.93 <= cov <= 0.97, f"{S} seeds, ease_sd {ease_sd}: coverage {cov:.3f}"


@pytest.mark.parametrize("seeds", [3, 5])
def test_pooled_interval_covers_95_at_the_study_design(seeds):
    """Five tasks at the committed none rates, every one with no effect: pooled_gain's interval holds 0."""
    rates = [0.82, 0.70, 0.51, 0.73, 0.55]
    rng = np.random.default_rng(seeds)
    arms = [stats.simulate_many(r, 0.0, seeds, 200, 0.5, 2000, rng) for r in rates]
    _, lo, hi = stats.pooled_intervals(arms)
    cov = np.mean((lo <= 0) & (hi >= 0))
    assert 0.93 <= cov <= 0.97, cov
    b, o = zip(*[(b[0], o[0]) for b, o in arms])   # the vectorised form is pooled_gain's
    assert stats.pooled_gain(list(zip(b, o)))["gain95"][0] == pytest.approx(lo[0], abs=2e-4)


def test_the_check_fails_an_interval_that_ignores_the_seed_spread():
    """An interval from the episodes alone (pooled McNemar-like: binomial SE of the difference over S x E
    episodes) undercovers once seeds spread: the coverage test is able to fail."""
    def episodes_only(b, o):
        d = o.mean((1, 2), dtype=np.float64) - b.mean((1, 2), dtype=np.float64)
        n = b.shape[1] * b.shape[2]
        se = np.sqrt((b.mean((1, 2)) * (1 - b.mean((1, 2))) + o.mean((1, 2)) * (1 - o.mean((1, 2)))) / n)
        return d - 1.96 * se, d + 1.96 * se
    assert stats.null_coverage(episodes_only, 5, 0.75, studies=2000) < 0.85


def test_t_quantiles_and_paired_t_known_values():
    assert stats.t_ppf(0.975, 2) == pytest.approx(4.3027, abs=1e-3)
    assert stats.t_ppf(0.975, 4) == pytest.approx(2.7764, abs=1e-3)
    assert stats.t_ppf(0.975, 1e6) == pytest.approx(1.95996, abs=1e-3)
    r = stats.paired_t([0.5, 0.6, 0.55], [0.6, 0.6, 0.65])            # d = 0.1, 0, 0.1
    assert r["diff"] == pytest.approx(0.2 / 3) and r["df"] == 2 and r["min_p_sign_flip"] == 0.25
    h = 4.3027 * np.std([0.1, 0, 0.1], ddof=1) / np.sqrt(3)
    assert r["diff95"] == pytest.approx([0.2 / 3 - h, 0.2 / 3 + h], abs=1e-4)
    assert r["gain"] == pytest.approx(r["diff"] / 0.55) and r["p_sign_flip"] == pytest.approx(0.5)
    p = stats.pooled_gain([([0.5, 0.6, 0.55], [0.6, 0.6, 0.65])] * 2)
    assert p["gain"] == pytest.approx(r["gain"]) and p["df"] == pytest.approx(4)


def test_calibration_recovers_the_simulated_heterogeneity():
    """calibrate() on synthetic none arms drawn at a known ease_sd and seed spread gives them back."""
    rng = np.random.default_rng(7)
    arms = {f"t{i}": stats.simulate_many(r, 0.0, 5, 200, 0.3, 1, rng, ease_sd=2.0)[0][0] for i, r in
            enumerate([0.8, 0.7, 0.5, 0.7, 0.55, 0.6, 0.65, 0.75])}
    c = stats.calibrate(arms, 200)
    assert 1.6 <= c["ease_sd"] <= 2.4 and c["seed_sd"] <= 0.6


def test_ease_sd_is_the_fit_on_the_committed_none_arms():
    """stats.EASE_SD is what calibrate() gives on the committed ablation's none evaluations."""
    summary = json.loads((ROOT / "results/ablation/cpu/summary.json").read_text())
    X = {}
    for t in summary["options"]["tasks"]:
        rows = []
        for s in range(summary["options"]["seeds"]["none"]):
            eps = json.loads((ROOT / f"results/ablation/cpu/eval/{t}/none_s{s}/results.json").read_text())["tasks"][t]["per_episode"]
            rows.append([float(e["success"]) for e in sorted(eps, key=lambda e: e["seed"])])
        X[t] = np.array(rows)
    assert stats.calibrate(X, summary["options"]["episodes"])["ease_sd"] == stats.EASE_SD
