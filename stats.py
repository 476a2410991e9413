"""Statistics for comparing policies by their success (numpy only): intervals, paired tests, and the gain of
one training variant over another with the spread between training seeds included.

    python stats.py power --base 0.5 --seeds 5 --episodes 200 [--seed-sd 0.22]   # the gain the design can detect
    python stats.py coverage [--method bootstrap --studies 300]   # the 95% intervals' coverage on null studies

The data of a comparison: for each variant a (S, E) array of 0/1 outcomes, row s the policy trained with
training seed s, column e evaluation episode e. Variants are paired twice: row s of every variant started from
the same weights and saw the same batches (ablation.py), and column e is the same layout for all of them.

The primary analysis, stated before the numbers (paired_t): per task, the per-seed differences d_s = rate(variant,
seed s) - rate(none, seed s), a t interval (df = S - 1) on their mean, reported as a relative gain (divided by the
none arm's mean rate), and the exact sign-flip test on d (`sign_flip_test`; its smallest p is 2 / 2**S: 0.25 for
3 seeds, 0.0625 for 5). The seeds are the units: each seed's rate already holds its episodes' noise. Across
tasks (pooled_gain): the mean of the tasks' relative gains, each task's variance from its own seeds,
Welch-Satterthwaite degrees of freedom. Both hold their 95% on simulated null studies (tests/test_coverage.py).
`hierarchical_bootstrap` (seeds, then one episode draw shared by all seeds) does not: at the calibrated
heterogeneity its interval held 0 in 87% and 91% of null studies with 3 and 5 seeds at a seed spread of 0.75, and
in 99% at spread 0 (`python stats.py coverage --method bootstrap --studies 300`); it stays for
diagnostics.compare's tables, not as a headline. `simulate` is calibrated on the ablation's recorded none arms (`calibrate`).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys

import numpy as np


def wilson(k: int, n: int, z: float = 1.959964) -> tuple:
    """Wilson score 95% interval for k successes out of n; (0, 1) when n = 0. Shared by both evaluators."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # the bounds are exactly 0 at k = 0 and exactly 1 at k = n; say so rather than leave it to rounding
    return (0.0 if k == 0 else max(0.0, float(c - h)), 1.0 if k == n else min(1.0, float(c + h)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c are the discordant pairs (only one of the two succeeded)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def sign_flip_test(diffs) -> float:
    """Exact two-sided paired test on per-seed differences (other - base): the share of the 2**S sign flips
    whose mean is at least as far from 0 as the observed one. Assumes only that, with no effect, each seed's
    difference is as likely to be negative as positive."""
    d = np.asarray(diffs, float)
    if len(d) == 0 or len(d) > 20:
        raise ValueError(f"sign_flip_test takes 1 to 20 seeds, got {len(d)}")
    signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)   # (2**S, S) of +-1
    means = np.abs(signs @ d)
    return float(np.mean(means >= abs(d.sum()) - 1e-12))


def _check(base, other) -> tuple:
    base, other = np.asarray(base, float), np.asarray(other, float)
    if base.ndim != 2 or base.shape != other.shape:
        raise ValueError(f"outcomes must be two (seeds, episodes) arrays of one shape, got {base.shape} and {other.shape}")
    return base, other


def bootstrap_means(outcomes: list, n_boot: int = 10_000, seed: int = 0, seeds: bool = True) -> np.ndarray:
    """(n_boot, V) success rates of V variants' (S, E) outcomes, each replicate drawing S seeds and then E
    episodes with replacement, the same draw for every variant (they are paired by seed and by episode).
    seeds=False keeps every seed once: the episode noise alone."""
    X = np.stack([np.asarray(o, float) for o in outcomes])                         # (V, S, E)
    _, S, E = X.shape
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, len(X)))
    for lo in range(0, n_boot, 1000):  # in blocks: the (B, E) products stay small
        B = min(1000, n_boot - lo)
        ws = (np.stack([np.bincount(r, minlength=S) for r in rng.integers(0, S, (B, S))]) if seeds
              else np.ones((B, S)))                                                 # (B, S) seed counts
        we = np.stack([np.bincount(r, minlength=E) for r in rng.integers(0, E, (B, E))])  # (B, E) episode counts
        means[lo:lo + B] = np.einsum("bs,vse,be->bv", ws, X, we) / (S * E)
    return means


def hierarchical_bootstrap(base, other, n_boot: int = 10_000, seed: int = 0) -> dict:
    """SECONDARY, miscalibrated with few seeds (coverage_table): the gain of `other` over `base`, both (S, E) 0/1
    outcomes paired by seed and episode, with percentile intervals from resampling seeds and episodes: the absolute difference in success rate and the relative
    gain (other - base) / base. p_boot: twice the share of replicates on the far side of 0 (at least 1/n_boot)."""
    base, other = _check(base, other)
    m = bootstrap_means([base, other], n_boot, seed)                                # (n_boot, 2)
    diff = m[:, 1] - m[:, 0]
    rel = diff / np.maximum(m[:, 0], 1e-9)
    b, o = base.mean(), other.mean()
    p = 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))
    return dict(base=b, other=o, diff=o - b, diff95=np.percentile(diff, [2.5, 97.5]).tolist(),
                gain=(o - b) / b if b > 0 else float("nan"), gain95=np.percentile(rel, [2.5, 97.5]).tolist(),
                p_boot=float(min(1.0, max(p, 1 / n_boot))), seeds=base.shape[0], episodes=base.shape[1])


def compare_variants(base, other) -> dict:
    """Everything a report states for one pair of variants: per-seed rates with Wilson intervals, per-seed
    McNemar, the pooled McNemar (episode noise only), the sign-flip test across seeds, the primary paired t
    ("paired_t") and the old bootstrap (secondary: it undercovers with few seeds)."""
    base, other = _check(base, other)
    per_seed = []
    for s in range(base.shape[0]):
        b, c = int(((base[s] == 1) & (other[s] == 0)).sum()), int(((base[s] == 0) & (other[s] == 1)).sum())
        per_seed.append(dict(base=base[s].mean(), other=other[s].mean(), b=b, c=c, p_mcnemar=mcnemar_exact(b, c)))
    B, C = sum(r["b"] for r in per_seed), sum(r["c"] for r in per_seed)
    diffs = other.mean(1) - base.mean(1)
    return dict(per_seed=per_seed, seed_sd=dict(base=float(base.mean(1).std(ddof=1)) if len(base) > 1 else 0.0,
                                                other=float(other.mean(1).std(ddof=1)) if len(other) > 1 else 0.0),
                pooled_mcnemar=dict(b=B, c=C, p=mcnemar_exact(B, C)), p_sign_flip=sign_flip_test(diffs),
                paired_t=paired_t(base, other), bootstrap=hierarchical_bootstrap(base, other))


# ----------------------------------------------------------------------------- the primary analysis (stated in advance)

def t_cdf(x: float, df: float) -> float:
    """Student's t distribution function (numpy only: Simpson's rule on the density; df may be fractional)."""
    if x == 0:
        return 0.5
    ax = min(abs(x), 1e3)
    g = np.linspace(0.0, ax, 4001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = c * (1 + g * g / df) ** (-(df + 1) / 2)
    area = (g[1] - g[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return 0.5 + math.copysign(min(area, 0.5), x)


@functools.lru_cache(maxsize=4096)
def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with df degrees of freedom (bisection on t_cdf)."""
    if not 0 < q < 1:
        raise ValueError(f"t_ppf needs q in (0, 1), got {q}")
    if q < 0.5:
        return -t_ppf(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2


def paired_t(base, other) -> dict:
    """THE PRIMARY ANALYSIS of one task and variant: base, other are (S, E) 0/1 outcomes (row s: training seed s of
    both variants, which share data order and initial weights; columns: the shared evaluation episodes), or (S,)
    per-seed success rates. d_s = rate(other, s) - rate(base, s); the 95% interval is the t interval on mean(d)
    (df = S - 1) and the relative gain is mean(d) / mean(base rate), its interval the same one divided by that
    mean. The seeds are the units: the episodes enter only through each seed's rate, so their noise is inside
    d's spread. p_sign_flip: the exact sign-flip test on d, whose smallest attainable p is 2 / 2**S."""
    b, o = np.asarray(base, float), np.asarray(other, float)
    if b.shape != o.shape or b.ndim not in (1, 2) or b.shape[0] < 2:
        raise ValueError(f"paired_t needs two arrays of one shape with at least 2 seeds, got {b.shape} and {o.shape}")
    rb, ro = (b.mean(1), o.mean(1)) if b.ndim == 2 else (b, o)
    d, S = ro - rb, len(rb)
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(S))
    tq = t_ppf(0.975, S - 1)
    ci = [m - tq * se, m + tq * se]
    p_t = 1.0 if se == 0 and m == 0 else 0.0 if se == 0 else 2 * (1 - t_cdf(abs(m) / se, S - 1))
    base_mean = float(rb.mean())
    rel = (lambda x: x / base_mean) if base_mean > 0 else (lambda x: float("nan"))
    return dict(seeds=S, episodes=int(b.shape[1]) if b.ndim == 2 else None, base=base_mean, other=float(ro.mean()),
                diffs=d.tolist(), diff=m, se=se, df=S - 1, diff95=ci, gain=rel(m), gain95=[rel(ci[0]), rel(ci[1])],
                p_t=float(min(1.0, p_t)), p_sign_flip=sign_flip_test(d), min_p_sign_flip=2 / 2 ** S)


def pooled_gain(pairs: list) -> dict:
    """THE POOLED ESTIMATE ACROSS TASKS, stated in advance: pairs = [(base, other), ...], one per task, each as
    paired_t takes them. A seed-level paired analysis with task as a fixed effect: the estimate is the unweighted
    mean of the tasks' relative gains g_t = mean(d_t) / mean(base_t); its variance sum_t s_t^2 / (S_t base_t^2) / T^2
    from each task's own spread of per-seed differences (tasks differ in spread, so none is pooled), with
    Welch-Satterthwaite degrees of freedom. Why fixed: the question is about these tasks, not a population of
    tasks five draws could estimate (a t across tasks would have 4 degrees of freedom); the seeds are the units."""
    rs = [paired_t(b, o) for b, o in pairs]
    if not rs or any(r["base"] <= 0 for r in rs):
        raise ValueError("pooled_gain needs at least one task, each with a base rate above 0")
    T = len(rs)
    v = np.array([(r["se"] / r["base"]) ** 2 for r in rs])            # variance of each task's relative gain
    g = float(np.mean([r["gain"] for r in rs]))
    var = float(v.sum() / T ** 2)
    df = float(v.sum() ** 2 / np.sum(v ** 2 / np.array([r["df"] for r in rs]))) if var > 0 else float(sum(r["df"] for r in rs))
    h = t_ppf(0.975, df) * math.sqrt(var)
    p = 1.0 if var == 0 and g == 0 else 0.0 if var == 0 else 2 * (1 - t_cdf(abs(g) / math.sqrt(var), df))
    return dict(tasks=T, seeds=[r["seeds"] for r in rs], gain=g, gain95=[g - h, g + h], df=df, p_t=float(min(1.0, p)))


def t_intervals(d, level: float = 0.95) -> tuple:
    """Vectorised paired_t: d (N, S) per-seed differences of N studies -> the (N,) lower and upper bounds."""
    d = np.asarray(d, float)
    S = d.shape[1]
    h = t_ppf(0.5 + level / 2, S - 1) * d.std(1, ddof=1) / math.sqrt(S)
    return d.mean(1) - h, d.mean(1) + h


# ----------------------------------------------------------------------------- simulation, calibration, power

EASE_SD = 1.85  # logit: the episodes' spread of ease, fitted (fit_ease_sd) to the recorded disagreement per episode of
# two none policies of the committed ablation (results/ablation/cpu/eval/*/none_s*; the fit: summary.json "calibration")
SEED_SD = 0.75  # logit: pooled from two measured pairs of training seeds, lift_block's 0.84 and 0.83 (200 episodes
# each, 0.1 apart) and the twin's 36 and 18 of 50 (1.5 apart): sqrt(mean(difference^2 / 2)); the prior of a design


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def simulate_many(base_rate: float, gain: float, seeds: int, episodes: int, seed_sd: float, studies: int, rng,
                  ease_sd: float = EASE_SD) -> tuple:
    """`studies` synthetic studies at once: two (studies, S, E) boolean outcome arrays of variants whose mean
    success rates are base_rate and base_rate * (1 + gain). On the logit scale each training seed of each variant
    gets its own offset ~ N(0, seed_sd) and each episode (a layout, shared by both variants and all seeds of a
    study) an ease ~ N(0, ease_sd); the intercept keeps the mean rate at the target (probit approximation)."""
    ease = rng.normal(0, ease_sd, (studies, 1, episodes)).astype(np.float32)
    out = []
    for rate in (base_rate, min(base_rate * (1 + gain), 0.999)):
        z = _logit(rate) * math.sqrt(1 + (math.pi / 8) * (ease_sd ** 2 + seed_sd ** 2))
        eta = z + rng.normal(0, seed_sd, (studies, seeds, 1)).astype(np.float32) + ease
        out.append(rng.random((studies, seeds, episodes), dtype=np.float32) < 1 / (1 + np.exp(-eta)))
    return out[0], out[1]


def simulate(base_rate: float, gain: float, seeds: int, episodes: int, seed_sd: float, rng, ease_sd: float = EASE_SD):
    """One synthetic study (simulate_many's model): two (S, E) float arrays of 0/1 outcomes."""
    b, o = simulate_many(base_rate, gain, seeds, episodes, seed_sd, 1, rng, ease_sd)
    return [b[0].astype(float), o[0].astype(float)]


_GH = np.polynomial.hermite_e.hermegauss(60)  # nodes and weights for E[f(X)], X ~ N(0, 1)


def _rate_moments(base_rate: float, seed_sd: float, ease_sd: float) -> tuple:
    """Under simulate's model, m(e) = E over seeds of an episode's success probability, on the quadrature nodes
    of the ease e, with their weights, and p(u, e) on both grids: (m, w_e, p, w_u)."""
    x, w = _GH[0], _GH[1] / _GH[1].sum()
    z = _logit(base_rate) * math.sqrt(1 + (math.pi / 8) * (ease_sd ** 2 + seed_sd ** 2))
    p = 1 / (1 + np.exp(-(z + seed_sd * x[:, None] + ease_sd * x[None, :])))   # (u, e)
    return w @ p, w, p, w


def expected_disagreement(base_rate: float, ease_sd: float, seed_sd: float = SEED_SD) -> float:
    """The expected share of episodes on which two policies of one variant (independent training seeds) differ,
    one succeeding and the other not: E_e[2 m(e) (1 - m(e))] (simulate's model, by quadrature)."""
    m, w, _, _ = _rate_moments(base_rate, seed_sd, ease_sd)
    return float(w @ (2 * m * (1 - m)))


def disagreement(outcomes) -> float:
    """The measured share: mean over pairs of rows of an (S, E) 0/1 array of the episodes on which they differ."""
    X = np.asarray(outcomes, float)
    S = len(X)
    k = X.sum(0)                                                               # successes per episode
    return float(np.mean(2 * k * (S - k) / (S * (S - 1))))


def fit_ease_sd(base_rate, measured, seed_sd: float = SEED_SD) -> float:
    """The ease_sd (0.05 grid, 0 to 6) whose expected_disagreement is nearest the measured one: more spread
    between episodes makes them more often all-succeed or all-fail, so fewer disagree. base_rate and measured
    may be lists (one per task): then one ease_sd for all, matching the tasks' mean disagreement."""
    rates, meas = np.atleast_1d(base_rate).astype(float), float(np.mean(measured))
    grid = np.arange(0.0, 6.0001, 0.05)
    err = [abs(np.mean([expected_disagreement(r, g, seed_sd) for r in rates]) - meas) for g in grid]
    return round(float(grid[int(np.argmin(err))]), 2)


def calibrate(none_outcomes: dict, episodes: int, rounds: int = 4) -> dict:
    """simulate's ease_sd and seed_sd fitted together on the none arms of a study: none_outcomes {task: (S, E)
    0/1 outcomes, the same E episodes for every seed}. ease_sd matches the tasks' mean disagreement per episode
    between two none policies (fit_ease_sd), seed_sd their per-seed rates' variance net of the episodes'
    noise, pooled over tasks (seed_sd_from_rates); each depends a little on the other, so they alternate."""
    X = {t: np.asarray(x, float) for t, x in none_outcomes.items()}
    rates, dis = [float(x.mean()) for x in X.values()], [disagreement(x) for x in X.values()]
    seed_sd = SEED_SD
    for _ in range(rounds):
        ease = fit_ease_sd(rates, dis, seed_sd)
        seed_sd = seed_sd_from_rates([x.mean(1) for x in X.values()], episodes, ease)
    per_task = {t: dict(base_rate=round(r, 4), seeds=len(x), disagreement=round(d, 4),
                        independent=round(2 * r * (1 - r), 4), ease_sd_alone=fit_ease_sd(r, d, seed_sd),
                        expected_at_fit=round(expected_disagreement(r, ease, seed_sd), 4),
                        seed_sd_alone=seed_sd_from_rates(x.mean(1), episodes, ease))
                for (t, x), r, d in zip(X.items(), rates, dis)}
    return dict(ease_sd=ease, seed_sd=seed_sd, mean_disagreement=round(float(np.mean(dis)), 4),
                expected_mean_disagreement=round(float(np.mean([expected_disagreement(r, ease, seed_sd) for r in rates])), 4),
                per_task=per_task)


def expected_rate_var(base_rate: float, seed_sd: float, episodes: int, ease_sd: float = EASE_SD) -> float:
    """Expected variance across training seeds of one variant's success rate on a shared set of `episodes`
    episodes: the seeds' spread of the rate plus the Bernoulli noise of each episode (simulate's model; the
    episode set drawn like the others)."""
    _, w, p, wu = _rate_moments(base_rate, seed_sd, ease_sd)
    mu = p @ w                                                                 # (u,) rate of a seed averaged over eases
    between = wu @ (mu - wu @ mu) ** 2                                          # spread of E_e p across seeds
    # the episode set is finite: the seeds' rates on it vary by the covariance of p(u, e) over u, averaged over e
    cov_e = wu @ (p - wu @ p) ** 2                                              # (e,) var over u of p(u, e)
    within = wu @ (p * (1 - p)) @ w                                             # Bernoulli noise
    return float(between + (w @ cov_e - between) / episodes + within / episodes)  # (1 - 1/E) shared + 1/E own


def seed_sd_from_rates(rates, episodes: int, ease_sd: float = EASE_SD) -> float:
    """The training-seed spread on the logit scale (simulate's seed_sd) whose expected variance of per-seed rates
    (expected_rate_var) matches the measured `rates`' variance, net of the episodes' noise: the first point of a
    0.01 grid (up to 3) that reaches it; 0 when the episodes' noise alone explains it. `rates` is one task's list
    or a list of tasks' lists: then one spread for all, matching the mean variance (more degrees of freedom)."""
    groups = [np.asarray(r, float) for r in (rates if np.ndim(rates[0]) else [rates])]
    if any(len(r) < 2 for r in groups):
        raise ValueError(f"seed_sd_from_rates needs at least 2 seeds, got {[len(r) for r in groups]}")
    obs = np.mean([r.var(ddof=1) for r in groups])
    bases = [min(max(float(r.mean()), 0.5 / episodes), 1 - 0.5 / episodes) for r in groups]
    for sd in np.arange(0.0, 3.0001, 0.01):
        if np.mean([expected_rate_var(b, float(sd), episodes, ease_sd) for b in bases]) >= obs:
            return round(float(sd), 2)
    return 3.0


def null_coverage(interval, seeds: int, seed_sd: float, studies: int = 2000, episodes: int = 200,
                  base_rate: float = 0.7, ease_sd: float = EASE_SD, seed: int = 0) -> float:
    """The share of `studies` simulated NULL studies (gain 0) whose interval holds 0. interval(base, other) takes
    two (N, S, E) outcome arrays and returns the (N,) lower and upper bounds of the difference."""
    b, o = simulate_many(base_rate, 0.0, seeds, episodes, seed_sd, studies, np.random.default_rng(seed), ease_sd)
    lo, hi = interval(b, o)
    return float(np.mean((np.asarray(lo) <= 0) & (np.asarray(hi) >= 0)))


def primary_interval(base, other) -> tuple:
    """paired_t's 95% interval of the difference for (N, S, E) outcome arrays of N studies (null_coverage)."""
    return t_intervals(other.mean(2, dtype=np.float64) - base.mean(2, dtype=np.float64))


def bootstrap_interval(base, other, n_boot: int = 1000) -> tuple:
    """hierarchical_bootstrap's 95% interval of the difference for (N, S, E) outcome arrays (null_coverage): the
    old headline interval, kept for comparison; it undercovers with 3 to 5 seeds (coverage_table)."""
    ci = np.array([hierarchical_bootstrap(b, o, n_boot, seed=i)["diff95"] for i, (b, o) in enumerate(zip(base, other))])
    return ci[:, 0], ci[:, 1]


COVERAGE_SEEDS, COVERAGE_SPREADS = (3, 5, 12), (0.0, 0.25, 0.5, 0.75)


def coverage_table(method: str = "t", studies: int = 2000, n_boot: int = 1000, ease_sd: float = EASE_SD,
                   seeds: tuple = COVERAGE_SEEDS) -> dict:
    """null_coverage of the primary interval ("t") or the old bootstrap ("bootstrap") at `seeds` (3, 5 and 12
    seeds) and seed spreads 0 to 0.75 (logit), 200 episodes, base rate 0.7: {"S seeds": {"spread": coverage}}."""
    f = primary_interval if method == "t" else functools.partial(bootstrap_interval, n_boot=n_boot)
    return {f"{S} seeds": {f"{sd:g}": null_coverage(f, S, sd, studies, ease_sd=ease_sd) for sd in COVERAGE_SPREADS}
            for S in seeds}


def power(base_rate: float, gain: float, seeds: int, episodes: int, seed_sd: float = SEED_SD, sims: int = 2000,
          seed: int = 0, ease_sd: float = EASE_SD) -> float:
    """Share of simulated studies whose primary 95% interval (paired_t) excludes 0 on the side of the true gain
    (two-sided test at 5%): the design's power to see `gain`."""
    b, o = simulate_many(base_rate, gain, seeds, episodes, seed_sd, sims, np.random.default_rng(seed), ease_sd)
    lo, hi = primary_interval(b, o)
    return float(np.mean(lo > 0 if gain > 0 else hi < 0 if gain < 0 else (lo > 0) | (hi < 0)))


def pooled_intervals(arms: list, level: float = 0.95) -> tuple:
    """Vectorised pooled_gain: arms = [(base, other), ...] per task, each two (N, S_t, E) outcome arrays of N
    studies -> the (N,) pooled relative gains and the lower and upper bounds of their interval."""
    v, g, dfs = [], [], []
    for b, o in arms:
        rb = b.mean(2, dtype=np.float64)
        d, bm = o.mean(2, dtype=np.float64) - rb, rb.mean(1)
        g.append(d.mean(1) / bm), v.append(d.var(1, ddof=1) / d.shape[1] / bm ** 2), dfs.append(d.shape[1] - 1)
    g, v, T = np.mean(g, 0), np.array(v), len(arms)
    var = v.sum(0) / T ** 2
    df = np.round(v.sum(0) ** 2 / np.maximum(np.sum(v ** 2 / np.array(dfs)[:, None], 0), 1e-300), 1)
    tq = np.array([t_ppf(0.5 + level / 2, float(max(x, 1.0))) for x in df])  # df to 0.1: t_ppf's cache
    return g, g - tq * np.sqrt(var), g + tq * np.sqrt(var)


def pooled_power(base_rates: list, seeds: list, gain: float, episodes: int, seed_sd: float = SEED_SD,
                 sims: int = 2000, seed: int = 0, ease_sd: float = EASE_SD) -> float:
    """Power of pooled_gain's 95% interval to exclude 0 when every task gains `gain` (one base rate and seed
    count per task)."""
    rng = np.random.default_rng(seed)
    _, lo, _ = pooled_intervals([simulate_many(r, gain, S, episodes, seed_sd, sims, rng, ease_sd)
                                 for r, S in zip(base_rates, seeds)])
    return float(np.mean(lo > 0))


def detectable_gain(base_rate: float, seeds: int, episodes: int, seed_sd: float = SEED_SD, target: float = 0.8,
                    sims: int = 2000, ease_sd: float = EASE_SD) -> float:
    """The smallest relative gain (on a 0.02 grid up to what keeps the rate under 1) seen with `target` power."""
    for gain in np.arange(0.02, 1 / base_rate - 1, 0.02):
        if power(base_rate, float(gain), seeds, episodes, seed_sd, sims, ease_sd=ease_sd) >= target:
            return round(float(gain), 2)
    return float("inf")


def main(argv=None) -> int:
    a = argparse.ArgumentParser(prog="stats.py", description=__doc__.split("\n")[0])
    sub = a.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("power", help="the relative gain a design detects with 80%% power, and its power at +14%%")
    p.add_argument("--base", type=float, required=True, help="the base variant's success rate, in (0, 1)")
    p.add_argument("--seeds", type=int, default=5), p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed-sd", type=float, default=SEED_SD, help="training-seed spread on the logit scale (see SEED_SD)")
    p.add_argument("--sims", type=int, default=2000)
    c = sub.add_parser("coverage", help="how often the nominal 95%% interval holds 0 on simulated null studies")
    c.add_argument("--method", choices=["t", "bootstrap"], default="t", help="t: the primary paired t; bootstrap: "
                   "the old hierarchical bootstrap (slow: use --studies 400)")
    c.add_argument("--studies", type=int, default=2000), c.add_argument("--n-boot", type=int, default=1000)
    for q in (p, c):
        q.add_argument("--out", default="", help="also write the result, the command and the git revision here (JSON)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = a.parse_args(argv)
    if args.cmd == "coverage":
        res = dict(method=args.method, studies=args.studies, episodes=200, base_rate=0.7, ease_sd=EASE_SD,
                   **({"n_boot": args.n_boot} if args.method == "bootstrap" else {}),
                   coverage=coverage_table(args.method, args.studies, args.n_boot))
    else:
        if not 0 < args.base < 1 or args.seeds < 2 or args.episodes < 1:
            print("stats.py: error: --base in (0, 1), --seeds >= 2, --episodes >= 1", file=sys.stderr)
            return 2
        res = dict(base=args.base, seeds=args.seeds, episodes=args.episodes, seed_sd=args.seed_sd, ease_sd=EASE_SD,
                   power_at_14pct=power(args.base, 0.14, args.seeds, args.episodes, args.seed_sd, args.sims),
                   detectable_gain_80pct=detectable_gain(args.base, args.seeds, args.episodes, args.seed_sd, sims=args.sims))
    print(json.dumps(res))
    if args.out:  # numpy only: the revision straight from git (data.git_revision also marks a dirty tree)
        import subprocess
        from pathlib import Path
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               capture_output=True, text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(dict(command="python stats.py " + " ".join(argv),
                                       git_revision=rev + ("-dirty" if dirty else ""), **res), indent=1) + "\n")
        tmp.replace(out)  # atomic: a killed run leaves the old file
    return 0


if __name__ == "__main__":
    sys.exit(main())
