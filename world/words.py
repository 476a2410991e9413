"""Many ways of asking for each task: a small grammar per task, expanded into instruction templates.

A task's grammar is a few sentence frames whose {slots} take synonyms (verbs, names for the objects, linking
words), and openings ("please ", ...) before them. Its templates name the same objects as the task's own
phrasings ({color}, {pad}, {c0}, {c1}, {c2}, filled from a layout by sim.instruction_fields) and include them.
`train.py --phrasings grammar` and `lab/ground.py --phrasings grammar` train on them; HELD_OUT holds sentences
the grammar never makes (new verbs, nouns, word orders, fragments), fixed before any training on the grammar,
for measuring how far the language side generalises (`eval_sim.py --instruction`).
"""
from __future__ import annotations

import itertools
import re
import zlib

import numpy as np

from world import sim

OPENINGS = ("", "please ", "now ", "could you ")  # only before a frame that starts with its verb
VERB_SLOTS = ("verb", "give", "put", "stack", "build")

# task -> (frames, slots): every frame with every choice of the slots it uses
GRAMMAR = {
    "lift_block": (
        ("{verb} the {color} {thing}", "{verb} the {color} {thing} off the table", "the {color} {thing}: {verb} that {thing}",
         "{verb} the {thing} that is {color}"),
        dict(verb=("lift", "pick up", "raise", "take", "get", "hold up"), thing=("block", "cube"))),
    "place_block": (
        ("{verb} the {color} {thing} {on} the {pad} {square}", "{on} the {pad} {square}: {verb} the {color} {thing}"),
        dict(verb=("put", "place", "move", "set"), thing=("block", "cube"), on=("on", "onto", "to"),
             square=("pad", "square"))),
    "lift_bar": (
        ("{verb} the {bar} {both}", "{both}, {verb} the {bar}"),
        dict(verb=("lift", "pick up", "raise"), bar=("bar", "long bar"),
             both=("with both arms", "using both grippers", "with both hands", "with two arms"))),
    "handover": (
        ("{give} the {color} {stick} {to}{then} {place} it on the {pad}",),
        dict(give=("hand", "pass", "give"), stick=("stick", "rod"),
             to=("to the left arm", "to the other arm", "from right to left"), then=(" and", ", then", " and then"),
             place=("put", "place", "set"), pad=("pad", "white pad"))),
    "stack_two": (
        ("{put} the {c0} {thing} on the {pad}{then} {stack} the {c1} {thing} on it",
         "{put} {c0} on the {pad} and {c1} on top of {c0}", "{stack} the {c1} {thing} onto the {c0} {thing} on the {pad}"),
        dict(put=("put", "place", "set"), stack=("stack", "put", "place"), thing=("block", "cube"),
             pad=("pad", "white pad", "white square"), then=(", then", " and then", " and"))),
    "stack_three": (
        ("{stack} the {c0}, {c1} and {c2} {things} on the {pad}, in that order",
         "{build} a {tower} on the {pad}: {c0} at the bottom, then {c1}, then {c2}",
         "{put} {c0} on the {pad}, {c1} on {c0}, and {c2} on {c1}"),
        dict(stack=("stack", "pile"), things=("blocks", "cubes"), pad=("pad", "white pad"), build=("build", "make"),
             tower=("tower", "stack"), put=("put", "place"))),
    "franka_pick_place": (
        ("{verb} the {color} {thing} {on} the {pad}", "{on} the {pad}: {verb} the {color} {thing}"),
        dict(verb=("put", "place", "move", "set"), thing=("block", "cube"), on=("on", "onto", "to"),
             pad=("pad", "white pad"))),
    "franka_stack": (
        ("{verb} the {c1} {thing} {on} the {c0} {thing}", "{verb} {c1} {on} {c0}"),
        dict(verb=("stack", "put", "place"), thing=("block", "cube"), on=("on", "onto", "on top of"))),
    "franka_put_in_bin": (
        ("{verb} the {color} {thing} {into} the {bin}",),
        dict(verb=("put", "drop", "place"), thing=("block", "cube"), into=("in", "into", "inside"),
             bin=("bin", "box", "container"))),
}

# Sentences the grammar never makes, per task. lift_block's five were measured against its templates before the
# grammar existed (results/phrasings/lift_block): new verbs (grab, hoist), nouns (box, brick), an order, a fragment.
HELD_OUT = {
    "lift_block": ("grab the {color} cube", "please pick up the {color} box", "the {color} block, lift it up",
                   "{color} block", "hoist the {color} brick into the air"),
    "place_block": ("drop the {color} block onto the {pad} mat", "{color} block on the {pad} pad"),
    "lift_bar": ("grab the bar with both hands and lift it", "both arms: raise the bar"),
    "handover": ("move the {color} stick over to the left hand, then onto the pad",),
    "stack_two": ("first the {c0} block on the pad, then the {c1} block on top",),
    "stack_three": ("make a tower of {c0}, {c1} and {c2} on the pad",),
    "franka_pick_place": ("drop the {color} block on the pad",),
    "franka_stack": ("the {c1} block goes on the {c0} block",),
    "franka_put_in_bin": ("throw the {color} cube in the bin",),
}


def templates(task: str) -> list:
    """Every template of the task's grammar (sorted, without repeats), openings included."""
    if task not in GRAMMAR:
        raise ValueError(f"no phrasing grammar for task '{task}'; tasks with one: {', '.join(GRAMMAR)}")
    frames, slots = GRAMMAR[task]
    out = set()
    for frame in frames:
        names = list(dict.fromkeys(re.findall(r"{(\w+)}", frame)))
        names = [n for n in names if n in slots]  # the objects' {color}, {pad}, ... stay for format()
        for choice in itertools.product(*(slots[n] for n in names)):
            filled = frame
            for n, w in zip(names, choice):
                filled = filled.replace("{" + n + "}", w)
            out |= {o + filled for o in (OPENINGS if frame.startswith(tuple("{%s}" % v for v in VERB_SLOTS)) else ("",))}
    return sorted(out)


def phrasings(task: str, fields: dict) -> list:
    """The grammar's sentences for one layout: every template with the layout's objects filled in."""
    return [t.format(**fields) for t in templates(task)]



def of_layout(task: str, seed: int) -> list:
    """The grammar's sentences for the layout of (task, seed): its objects filled in."""
    import world  # the package: both suites' tasks
    return phrasings(task, sim.instruction_fields(world.suite_of(task).TASKS[task].layout(seed)))


def sample(task: str, seed: int) -> str:
    """One of the grammar's sentences for the layout of (task, seed), drawn by the seed alone."""
    options = of_layout(task, seed)
    return options[np.random.default_rng([zlib.crc32(b"words"), int(seed)]).integers(len(options))]


COLOR_WORDS = tuple(sim.COLORS) + tuple(sim.PAD_COLORS)


def absent_colors(text: str, task: str, seed: int) -> list:
    """The colours `text` names that no object on the table of the layout (task, seed) has: an instruction asking
    for an object that is not there. Objects a layout does not use lie off the table (sim._park_unused)."""
    import world
    task_ = world.suite_of(task).TASKS[task]
    colors = {o.color for o in task_.objects() if o.name in (p := task_.layout(seed).poses) and abs(p[o.name][1]) < 0.5}
    return [w for w in COLOR_WORDS if re.search(rf"\b{w}\b", text.lower()) and w not in colors]
