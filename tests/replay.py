"""Replaying a scripted expert's demonstration on a moved layout: how tests/test_sim.py and tests/test_twin.py
check the scene symmetries that train.py --symmetry relies on (sim.py, twin.py)."""
import dataclasses

import numpy as np

from world import experts


def record_expert(env, seed: int):
    """(layout, actions (T, A)) of the expert on `seed`; the env is stepped as it goes (the expert reads it)."""
    env.reset(seed)
    layout, actions = env.layout, []
    for a in experts.make_expert(env).actions():
        env.step(a)
        actions.append(a)
    return layout, np.stack(actions)


def solves(env, layout, poses: dict, actions, seed: int) -> bool:
    """Replay `actions` on `layout` with its objects at `poses` (name -> (x, y, yaw)); True on success."""
    task0, moved = env.task, dataclasses.replace(layout, poses=poses)

    class Fixed(type(task0)):
        def layout(self, seed, lay=moved):
            return lay
    env.task = Fixed(**dataclasses.asdict(task0))
    try:
        env.reset(seed)
        for a in actions:
            env.step(a)
            if env.success:
                break
        return env.success
    finally:
        env.task = task0
