"""The phrasing grammar (world/words.py): what it makes, what it holds out, how training and evaluation use it."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import dataset  # noqa: E402
import eval_sim  # noqa: E402
import train  # noqa: E402
import world  # noqa: E402
from model import Tokenizer, train_tokenizer  # noqa: E402
from synthetic import make_dataset  # noqa: E402
from world import sim, words  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("task", world.all_tasks())
def test_grammar_holds_the_tasks_phrasings_and_never_its_held_out_sentences(task):
    made = words.templates(task)
    assert len(made) >= 50 and len(set(made)) == len(made)
    assert set(world.suite_of(task).TASKS[task].phrasings) <= set(made)  # the templates are in-distribution
    assert not set(words.HELD_OUT[task]) & set(made)
    filled = words.of_layout(task, 3)  # every template names objects the layout has
    layout = world.suite_of(task).TASKS[task].layout(3)
    fields = sim.instruction_fields(layout)
    assert all("{" not in f for f in filled) and all(words.absent_colors(f, task, 3) == [] for f in filled)
    assert all(any(v in f for v in fields.values()) for f in filled if fields)
    assert words.sample(task, 3) == words.sample(task, 3) in filled


def test_an_instruction_asking_for_an_object_not_there_gets_a_clear_answer():
    seeds = [sim.EVAL_SEED_OFFSET + i for i in range(20)]
    assert eval_sim.own_words("grab the {color} cube", "lift_block", seeds)[0].startswith("grab the ")
    with pytest.raises(ValueError, match=r"asks for a purple object, which is not on the table in 20 of 20"):
        eval_sim.own_words("lift the purple block", "lift_block", seeds)
    absent = [s for s in seeds if "red" not in {o.split("_")[1] for o, p in sim.TASKS["lift_block"].layout(s)
                                                 .poses.items() if abs(p[1]) < 0.5}]
    assert absent  # 3 of the 4 blocks are on the table: red is missing from some layouts
    with pytest.raises(ValueError, match=rf"red object, which is not on the table in {len(absent)} of 20"):
        eval_sim.own_words("lift the red block", "lift_block", seeds)


def test_phrasings_grammar_gives_each_sample_one_of_its_episodes_ways_of_asking(tmp_path):
    ds = make_dataset(tmp_path / "d", n_episodes=2, T=12, task="lift_block", instruction="lift the red block")
    D = dataset.load_folders([str(ds)], None, "per-arm")
    tok = Tokenizer(train_tokenizer(words.templates("lift_block"), 300))
    ids, mask = train.grammar_language(tok, D, 32)                              # (E, N, L)
    assert ids.shape[:2] == (2, len(words.templates("lift_block")))
    for e, seed in enumerate(D["ep_seeds"]):  # the episode's own layout: its target's colour in every sentence
        color = sim.instruction_fields(sim.TASKS["lift_block"].layout(seed))["color"]
        said = {tok.sp.decode(ids[e, j][mask[e, j]].tolist()) for j in range(ids.shape[1])}
        assert said == set(words.of_layout("lift_block", seed)) and all(color in s for s in said)
    cfg = type("C", (), dict(horizon=3, image_size=(32, 32)))
    norm = train.Normalizer(dataset.compute_stats(D), "cpu")
    batch = dataset.make_batch(D, (ids, mask), norm, torch.Generator().manual_seed(0), 64, cfg, 0, "cpu")
    rows = {tuple(r.tolist()) for r in batch["lang_ids"]}
    assert len(rows) > 20  # drawn anew per sample, not one sentence per episode
    own = train.language(tok, D["texts"], 32)
    plain = dataset.make_batch(D, own, norm, torch.Generator().manual_seed(0), 64, cfg, 0, "cpu")
    assert len({tuple(r.tolist()) for r in plain["lang_ids"]}) == 1  # 'templates': the episode's own


def test_phrasings_grammar_refuses_episodes_without_a_layout(tmp_path):
    ds = make_dataset(tmp_path / "d", n_episodes=1, T=12)  # task synthetic_lift: no layouts, no grammar
    D = dataset.load_folders([str(ds)], None, "per-arm")
    with pytest.raises(ValueError, match="--phrasings grammar needs episodes of the simulated tasks"):
        train.grammar_language(Tokenizer(train_tokenizer(["a b"], 300)), D, 16)
