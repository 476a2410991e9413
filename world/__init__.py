"""Every task of both scenes: the bimanual suite (sim.py) and the Franka twin (twin.py).

A suite is a module with TASKS, STAGES, CAMERAS, ROBOT, ACTION_NAMES, GRIPPER_INDICES, SYMMETRY and an Env
class. Scripts that take any task (data.py, ground.py, experts.py, train.py's symmetry) find its suite here,
so that neither scene module needs to know the other.
"""
from __future__ import annotations

import numpy as np

from world import sim, twin

SUITES = (sim, twin)


def suite_of(task: str):
    """The suite module that defines `task`; ValueError naming every known task otherwise."""
    for s in SUITES:
        if task in s.TASKS:
            return s
    raise ValueError(f"unknown task '{task}'; known tasks: {', '.join(all_tasks())}")


def suite_of_robot(robot: str):
    """The suite whose robot recorded a dataset (meta.json 'robot'), or None."""
    return next((s for s in SUITES if s.ROBOT == robot), None)


def all_tasks() -> list:
    return [t for s in SUITES for t in s.TASKS]


def make_env(task: str, **kw):
    """The environment of any suite's task (same arguments as sim.Env)."""
    return suite_of(task).Env(task, **kw)


LONG_KINDS = ("rod", "bar")


def located(env) -> tuple:
    """(names, (2R,) metres): the (x, y) of every object the instruction names, by role. A long object (a rod,
    the bar) is located twice, as role "r" at its centre and "r_end" at its end on the +x side: how to grasp
    it turns with its yaw, which a single point does not tell. The front end's labels (lab/ground.py), and what
    data.py records with each frame (episode key "positions")."""
    names, xy = [], []
    for r in sorted(env.layout.roles):
        n = env.layout.roles[r]
        names.append(r), xy.append(env.obj_pos(n)[:2])
        if next(o.kind for o in env.objects if o.name == n) in LONG_KINDS:
            axis = env.obj_axis(n)[:2] * (1 if env.obj_axis(n)[0] >= 0 else -1)
            names.append(f"{r}_end"), xy.append(xy[-1] + env.objects_half(n)[0] * axis)
    return names, np.concatenate(xy)
