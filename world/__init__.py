"""Every task of both scenes: the bimanual suite (sim.py) and the Franka twin (twin.py).

A suite is a module with TASKS, STAGES, CAMERAS, ROBOT, ACTION_NAMES, GRIPPER_INDICES, SYMMETRY and an Env
class. Scripts that take any task (data.py, ground.py, experts.py, train.py's symmetry) find its suite here,
so that neither scene module needs to know the other.
"""
from __future__ import annotations

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
