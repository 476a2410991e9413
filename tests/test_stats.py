"""stats.py on synthetic outcomes with a known effect and with none (numpy only, a few seconds)."""
import numpy as np
import pytest

from conftest import ROOT  # noqa: F401  (puts the project on the path)
import stats  # noqa: E402


def test_wilson_and_mcnemar_known_values():
    lo, hi = stats.wilson(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64) and stats.mcnemar_exact(3, 3) == 1.0


def test_sign_flip_test_exact_values():
    assert stats.sign_flip_test([0.1, 0.2, 0.05, 0.3, 0.1]) == pytest.approx(2 / 32)  # 5 seeds: the floor
    assert stats.sign_flip_test([0.1, -0.1, 0.1, -0.1]) == 1.0
    with pytest.raises(ValueError, match="1 to 20 seeds"):
        stats.sign_flip_test([])


def test_bootstrap_finds_a_known_gain():
    rng = np.random.default_rng(1)
    base, other = stats.simulate(0.4, 0.5, seeds=5, episodes=200, seed_sd=0.1, rng=rng)
    r = stats.hierarchical_bootstrap(base, other, n_boot=2000)
    assert r["diff95"][0] > 0 and r["gain95"][0] < 0.5 < r["gain95"][1] and r["p_boot"] < 0.01
    c = stats.compare_variants(base, other)
    assert len(c["per_seed"]) == 5 and c["pooled_mcnemar"]["p"] < 0.01 and c["p_sign_flip"] == pytest.approx(2 / 32)


def test_no_effect_is_rarely_called_one():
    """Gain 0, 40 studies: the 95% interval excludes 0 in few of them (about 2 expected)."""
    rng = np.random.default_rng(2)
    called = 0
    for i in range(40):
        base, other = stats.simulate(0.5, 0.0, seeds=5, episodes=100, seed_sd=0.35, rng=rng)
        lo, hi = stats.hierarchical_bootstrap(base, other, n_boot=500, seed=i)["diff95"]
        called += lo > 0 or hi < 0
    assert called <= 6


def test_seed_spread_widens_the_interval():
    """With a large seed-to-seed spread the hierarchical interval is wider than the episodes-only one."""
    rng = np.random.default_rng(3)
    base, other = stats.simulate(0.5, 0.0, seeds=5, episodes=200, seed_sd=1.0, rng=rng)
    both = np.diff(np.percentile(np.diff(stats.bootstrap_means([base, other], 2000), axis=1), [2.5, 97.5]))[0]
    eps = np.diff(np.percentile(np.diff(stats.bootstrap_means([base, other], 2000, seeds=False), axis=1),
                                [2.5, 97.5]))[0]
    assert both > 1.3 * eps


def test_power_grows_with_the_gain():
    assert stats.power(0.5, 0.0, seeds=5, episodes=100, sims=400) <= 0.08   # the primary paired t: 5% under the null
    assert stats.power(0.5, 0.8, seeds=5, episodes=100, sims=400) >= 0.9
    with pytest.raises(ValueError, match="two \\(seeds, episodes\\) arrays"):
        stats.hierarchical_bootstrap(np.zeros((2, 3)), np.zeros((3, 3)))


def test_seed_spread_is_recovered_from_rates():
    # 40 synthetic training seeds on 200 shared episodes: the spread put in comes back, net of the binomial one
    for sd, lo, hi in ((0.0, 0.0, 0.2), (1.0, 0.7, 1.35)):
        rates = stats.simulate(0.6, 0.0, seeds=40, episodes=200, seed_sd=sd, rng=np.random.default_rng(5))[0].mean(1)
        assert lo <= stats.seed_sd_from_rates(rates, 200) <= hi
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.seed_sd_from_rates([0.5], 200)


def test_power_command_writes_its_command(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert stats.main(["power", "--base", "0.5", "--seeds", "3", "--episodes", "20", "--sims", "5", "--out", str(out)]) == 0
    import json
    r = json.loads(out.read_text())
    assert r["command"].startswith("python stats.py power --base 0.5") and r["git_revision"] and r["seeds"] == 3
    assert stats.main(["power", "--base", "1.5"]) == 2 and "--base in (0, 1)" in capsys.readouterr().err
