"""Statistics for comparing policies by their success (numpy only): intervals, paired tests, and the gain of
one training variant over another with the spread between training seeds included.

    python stats.py power --base 0.5 --seeds 5 --episodes 200 [--seed-sd 0.75]   # the gain the design can detect

The data of a comparison: for each variant a (S, E) array of 0/1 outcomes, row s the policy trained with
training seed s, column e evaluation episode e. Variants are paired twice: row s of every variant started from
the same weights and saw the same batches (ablation.py), and column e is the same layout for all of them.

Two sources of noise decide whether a gain is real: the E episodes (a binomial spread, what a Wilson interval
shows) and the S training seeds (two seeds of one recipe differed by 18 of 50 episodes, notebooks-2026-12-07:docs/experiments.md).
`hierarchical_bootstrap` resamples both, seeds first and then episodes, so its interval holds both; McNemar's
test per seed holds only the first. `sign_flip_test` asks the seeds alone: with S seeds its smallest p-value
is 2 / 2**S (0.0625 for 5), which is the honest limit of 5 seeds.
"""
from __future__ import annotations

import argparse
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
    """The gain of `other` over `base`, both (S, E) 0/1 outcomes paired by seed and episode, with 95% intervals
    that hold the seed-to-seed and the episode spread: the absolute difference in success rate and the relative
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
    McNemar, the pooled McNemar (episode noise only), the sign-flip test across seeds and the bootstrap."""
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
                bootstrap=hierarchical_bootstrap(base, other))


# ----------------------------------------------------------------------------- power, before the runs

def simulate(base_rate: float, gain: float, seeds: int, episodes: int, seed_sd: float, rng, ease_sd: float = 1.0):
    """One synthetic study: (S, E) outcomes of two variants whose mean success rates are base_rate and
    base_rate * (1 + gain). On the logit scale each training seed of each variant gets its own offset
    ~ N(0, seed_sd) and each episode (a layout, shared by both) an ease ~ N(0, ease_sd)."""
    logit = lambda p: math.log(p / (1 - p))
    ease = rng.normal(0, ease_sd, episodes)                                        # (E,)
    out = []
    for rate in (base_rate, min(base_rate * (1 + gain), 0.999)):
        z = logit(rate) * math.sqrt(1 + (math.pi / 8) * (ease_sd ** 2 + seed_sd ** 2))  # mean rate stays ~rate
        p = 1 / (1 + np.exp(-(z + rng.normal(0, seed_sd, (seeds, 1)) + ease)))     # (S, E)
        out.append((rng.random((seeds, episodes)) < p).astype(float))
    return out


SEED_SD = 0.75  # logit: pooled from two measured pairs of training seeds, lift_block's 0.84 and 0.83 (200 episodes
# each, 0.1 apart) and the twin's 36 and 18 of 50 (1.5 apart): sqrt(mean(difference^2 / 2))


def power(base_rate: float, gain: float, seeds: int, episodes: int, seed_sd: float = SEED_SD, sims: int = 300,
          n_boot: int = 400, seed: int = 0) -> float:
    """Share of simulated studies whose hierarchical-bootstrap 95% interval of the difference excludes 0 on
    the side of the true gain: the design's power to see `gain` (seed_sd: SEED_SD)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(sims):
        base, other = simulate(base_rate, gain, seeds, episodes, seed_sd, rng)
        m = bootstrap_means([base, other], n_boot, seed + i)
        lo, hi = np.percentile(m[:, 1] - m[:, 0], [2.5, 97.5])
        hits += (lo > 0) if gain > 0 else (hi < 0) if gain < 0 else (lo > 0 or hi < 0)
    return hits / sims


def seed_sd_from_rates(rates, episodes: int, sims: int = 400, seed: int = 0) -> float:
    """The training-seed spread on the logit scale (simulate's seed_sd) that makes the per-seed success rates of
    `episodes` shared episodes vary as much as the measured `rates` do, net of the episodes' binomial spread:
    the first point of a 0.05 grid (up to 3) whose expected variance reaches the measured one; 0 when the
    binomial spread alone explains it. A point estimate, rough from a handful of seeds."""
    r = np.asarray(rates, float)
    if len(r) < 2:
        raise ValueError(f"seed_sd_from_rates needs at least 2 seeds, got {len(r)}")
    base = min(max(float(r.mean()), 0.5 / episodes), 1 - 0.5 / episodes)
    observed = r.var(ddof=1)
    for sd in np.arange(0.0, 3.0001, 0.05):
        runs = simulate(base, 0.0, sims, episodes, float(sd), np.random.default_rng(seed))[0]   # (sims, E)
        if runs.mean(1).var(ddof=1) >= observed:
            return round(float(sd), 2)
    return 3.0


def detectable_gain(base_rate: float, seeds: int, episodes: int, seed_sd: float = SEED_SD, target: float = 0.8,
                    sims: int = 300) -> float:
    """The smallest relative gain (on a 0.02 grid up to what keeps the rate under 1) seen with `target` power."""
    for gain in np.arange(0.02, 1 / base_rate - 1, 0.02):
        if power(base_rate, float(gain), seeds, episodes, seed_sd, sims) >= target:
            return round(float(gain), 2)
    return float("inf")


def main(argv=None) -> int:
    a = argparse.ArgumentParser(prog="stats.py", description=__doc__.split("\n")[0])
    sub = a.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("power", help="the relative gain a design detects with 80%% power, and its power at +14%%")
    p.add_argument("--base", type=float, required=True, help="the base variant's success rate, in (0, 1)")
    p.add_argument("--seeds", type=int, default=5), p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed-sd", type=float, default=SEED_SD, help="training-seed spread on the logit scale (see SEED_SD)")
    p.add_argument("--sims", type=int, default=300)
    p.add_argument("--out", default="", help="also write the result, the command and the git revision here (JSON)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = a.parse_args(argv)
    if not 0 < args.base < 1 or args.seeds < 2 or args.episodes < 1:
        print("stats.py: error: --base in (0, 1), --seeds >= 2, --episodes >= 1", file=sys.stderr)
        return 2
    res = dict(base=args.base, seeds=args.seeds, episodes=args.episodes, seed_sd=args.seed_sd,
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
