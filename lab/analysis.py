"""The StaKe ablation's primary analysis as its report shows it (lab/ablation.py writes the report): the text of
the analysis stated before the numbers (PRIMARY), the headline table of gains over none per task with the
training-seed spread (stats.paired_t) and pooled over tasks (stats.pooled_gain), the simulation calibrated on the
none arms, the power of the design actually used and the coverage of the primary interval.

A change to what these report, or how, bumps ANALYSIS, so that `python lab/ablation.py --preset P --only report`
makes the report of the same evaluations again.
"""
from __future__ import annotations

from pathlib import Path

import stats

ANALYSIS = "paired-t-v4"  # the report's analysis: a change here remakes the report of the same evaluations
PRIMARY = ["## Primary analysis (stated before the numbers)", "",
           "Per task and variant: the per-seed differences d_i = success(variant, training seed i) - success(none, "
           "seed i) (seeds pair by number, the leading seeds 0, 1, ... evaluated in both arms: the variants share "
           "data order and initial weights; every policy plays the same 200 evaluation seeds); a t interval (df = "
           "seeds - 1) on their mean, reported as a relative gain (divided by none's mean rate) (`stats.paired_t`); and the exact sign-flip test on d, whose smallest "
           "attainable p is 2/2^seeds (0.25 with 3 seeds, 0.0625 with 5). Across tasks, per variant "
           "(`stats.pooled_gain`): the mean of the tasks' relative gains, each task's variance from its own "
           "seeds, Welch-Satterthwaite degrees of freedom (task a fixed effect: the question is about these tasks; "
           "a t across the tasks would have one degree of freedom fewer than tasks). Both intervals hold 0 in "
           "93-97% of simulated null studies at 3, 5 and 12 seeds and seed spreads 0-0.75 (tests/test_coverage.py). The hierarchical "
           "bootstrap of earlier reports does not (87-91% at spread 0.75 with 3-5 seeds, 99% at 0: "
           "`python stats.py coverage --method bootstrap --studies 300`); it is left out here and stays only in the "
           "per-task compare.md files of lab/diagnostics.py, as a secondary column.", ""]


def strip_bootstrap(md: str) -> str:
    """diagnostics.compare's markdown without its hierarchical-bootstrap table (paragraph and table)."""
    blocks, out = md.split("\n\n"), []
    skip = False
    for b in blocks:
        if b.startswith("Gain over **") and "hierarchical bootstrap" in b:
            skip = True
            continue
        if skip and b.startswith("| task | variant | seeds x episodes"):
            skip = False
            continue
        skip = False
        out.append(b)
    return "\n\n".join(out)


def power_of_design(episodes: int, base_rate: float, seed_counts: list, calib: dict) -> dict:
    """The primary test's power at the paper's +14% and the relative gain seen with 80% power, for each seed
    count of the variants (none has as many seeds as the variant it pairs with), 200 episodes, under the
    simulation calibrated on the none arms (seed spread and episode heterogeneity) and at the prior spread."""
    out = dict(base_rate=round(base_rate, 3), episodes=episodes)
    if not 0 < base_rate < 1 or not calib:
        return out
    for S in seed_counts:
        if S < 2:
            continue
        for key, sd in (("calibrated", calib["seed_sd"]), ("prior", stats.SEED_SD)):
            out[f"{S}_seeds_{key}"] = dict(seed_sd=sd, power_at_14pct=stats.power(base_rate, 0.14, S, episodes, sd, ease_sd=calib["ease_sd"]),
                                           detectable_gain_80pct=stats.detectable_gain(base_rate, S, episodes, sd, ease_sd=calib["ease_sd"]))
    return out


def power_line(pw: dict, calib: dict) -> str:
    cells = [(k.split("_")[0], pw[k], pw[k.replace("calibrated", "prior")]) for k in pw if k.endswith("_calibrated")]
    if not cells:
        return "Power of this design: not computed (base at 0 or 1, or one seed)."
    fmt = lambda g: f"+{g:.0%} relative" if g != float("inf") else "no gain that keeps the rate under 1"  # noqa: E731
    return (f"Power of this design, by the primary test (stats.power: paired t, two-sided 5%, {pw['episodes']} episodes, base "
            f"{pw['base_rate']:.2f}, episode heterogeneity {calib['ease_sd']} and seed spread {calib['seed_sd']} on "
            f"the logit scale, both calibrated on the none arms): " + "; ".join(
                f"{S} seeds: {c['power_at_14pct']:.0%} at the paper's +14%, {fmt(c['detectable_gain_80pct'])} "
                f"seen with 80% power (at the prior spread {p['seed_sd']}: {p['power_at_14pct']:.0%}, "
                f"{fmt(p['detectable_gain_80pct'])})" for S, c, p in cells) + ".")


def calibration_lines(calib: dict, pooled_pw: dict, coverage: dict) -> list:
    if not calib:
        return []
    rows = [f"| {t} | {c['base_rate']:.3f} | {c['disagreement']:.3f} | {c['independent']:.3f} | {c['ease_sd_alone']} | "
            f"{c['expected_at_fit']:.3f} |" for t, c in calib["per_task"].items()]
    return ["## The simulation, calibrated on the none arms (stats.calibrate)", "",
            f"Share of episodes on which two none policies (different training seeds) disagree, over the pairs of "
            f"seeds: mean {calib['mean_disagreement']:.3f} over the tasks, matched by an episode heterogeneity "
            f"ease_sd = {calib['ease_sd']} (logit; expected {calib['expected_mean_disagreement']:.3f}) with a "
            f"training-seed spread {calib['seed_sd']} fitted on the none arms' per-seed rates, pooled over tasks "
            f"(stats.SEED_SD, the prior, is 0.75).", "",
            "| task | none rate | disagreement | if episodes were alike | ease_sd fitted alone | expected at the fit |",
            "|---|---|---|---|---|---|", *rows, "",
            "Power of the pooled estimate to see +14% on every task: " +
            ", ".join(f"{k} per task {v:.0%}" for k, v in pooled_pw.items()) + ".", "",
            "Coverage of the primary 95% interval on 2000 simulated null studies per cell (base 0.7, 200 episodes, "
            "this ease_sd; stats.coverage_table), at 3, 5 and 12 seeds and at the seed counts of this report:", "", "| seeds | " + " | ".join(f"spread {k}" for k in
            next(iter(coverage.values()))) + " |", "|---|" + "---|" * len(next(iter(coverage.values()))),
            *[f"| {S} | " + " | ".join(f"{c:.1%}" for c in row.values()) + " |" for S, row in coverage.items()], ""]


def pooled_gains(gains: list) -> dict:
    """stats.pooled_gain per variant over the tasks of headline_gains' rows (their per-seed rates)."""
    by = {}
    for g in gains:
        by.setdefault(g["variant"], []).append((g["none_rates"], g["other_rates"]))
    return {v: stats.pooled_gain(p) for v, p in by.items()}


def headline_gains(per_task: dict, out: Path, variants: list) -> tuple:
    """The headline: each variant's relative gain over none per task (seed i against seed i; the primary paired t
    interval, stats.paired_t) and the pooled estimate per variant (pooled_gains), as rows and report lines,
    and SS+KS's gain against the task's gripper events as OUT/gain_vs_events.png. per_task: {task: {"compare":
    compare.json}}."""
    gains, points = [], []
    for ti, t in enumerate(sorted(per_task, key=lambda t: per_task[t]["compare"]["tasks"][t]["gripper_events"])):
        cmp = per_task[t]["compare"]
        for v in variants:
            seeded = cmp["paired"].get(v, {}).get(t, {}).get("seeds")
            if seeded and seeded["paired_t"]["gain"] == seeded["paired_t"]["gain"]:   # NaN where none never succeeds
                pt = seeded["paired_t"]
                gains.append(dict(task=t, events=cmp["tasks"][t]["gripper_events"], variant=v, seeds=pt["seeds"],
                                  none=pt["base"], other=pt["other"], diff=pt["diff"], diff95=pt["diff95"],
                                  gain=pt["gain"], gain95=pt["gain95"], se=pt["se"], p_t=pt["p_t"],
                                  p_sign_flip=pt["p_sign_flip"], min_p_sign_flip=pt["min_p_sign_flip"],
                                  none_rates=[r["base"] for r in seeded["per_seed"]],
                                  other_rates=[r["other"] for r in seeded["per_seed"]]))
                if v == "SS+KS":
                    points.append((gains[-1]["events"], pt["gain"], t, ti, *pt["gain95"]))
    pooled = pooled_gains(gains)
    # where every per-seed difference is the same (two seeds can), the t interval has no spread to stand on:
    # the report shows no interval and no p (t) rather than a zero-width interval and p 0
    flat = lambda r: r["gain95"][0] == r["gain95"][1]  # noqa: E731
    ci = lambda r, k, f: ("[no spread: every seed's difference equal]" if flat(r)  # noqa: E731
                          else f"[{format(r[k][0], f)}, {format(r[k][1], f)}]")
    if points:
        import plots
        plots.scatter_chart(out / "gain_vs_events.png", points, "SS+KS: relative gain over none vs gripper events",
                            "gripper events (expert)", "relative gain, paired t 95% over training seeds")
    lines = ["## Gain over none with the training-seed spread, by gripper events (primary analysis)", "",
             "| task | events | variant | seeds | relative gain [95%] | difference [95%] | p (t) | p (sign flip; floor) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {g['task']} | {g['events']} | {g['variant']} | {g['seeds']} | {g['gain']:+.1%} {ci(g, 'gain95', '+.1%')} | "
              f"{g['diff']:+.3f} {ci(g, 'diff95', '+.3f')} | {'-' if flat(g) else format(g['p_t'], '.3g')} | "
              f"{g['p_sign_flip']:.3g}; {g['min_p_sign_flip']:.3g} |" for g in gains]
    if any(flat(g) for g in gains):
        lines += ["", "Where every seed's difference is the same (two seeds can), the t interval has no spread to stand "
                  "on: no interval and no p (t) are shown."]
    lines += ["", "Pooled over the tasks (stats.pooled_gain, stated above):", "",
              "| variant | tasks | relative gain [95%] | df | p (t) |", "|---|---|---|---|---|"]
    lines += [f"| {v} | {r['tasks']} | {r['gain']:+.1%} {ci(r, 'gain95', '+.1%')} | {r['df']:.1f} | "
              f"{'-' if flat(r) else format(r['p_t'], '.3g')} |" for v, r in pooled.items()]
    return gains, lines + (["", "![gain vs events](gain_vs_events.png)", ""] if points else [""])
