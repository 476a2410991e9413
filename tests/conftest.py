"""Shared test setup: the repo root on sys.path, MuJoCo's EGL backend, torch imported first, and the
Hypothesis profiles of the property tests (tests/test_segment.py).

Hypothesis profiles, chosen by the environment variable HYPOTHESIS_PROFILE (default "ci"):

  ci       what `python -m pytest -q tests` and .ci/run use: derandomize=True (the same examples on
           every run and machine, so a test is red or green for the code, not for the draw),
           database=None (no .hypothesis/ replay of a failure drawn once in this clone), 250 examples,
           no deadline, print_blob=True (a failure prints an @reproduce_failure line).
  explore  a randomized search for new failures: 2000 examples, a fresh seed each run, failures saved
           to .hypothesis/ and replayed first next time (the directory is git-ignored):

               HYPOTHESIS_PROFILE=explore python -m pytest -q tests/test_segment.py -k property

           Add --hypothesis-seed=N to repeat a search, --hypothesis-show-statistics for counts. Pin what
           it finds as an @example (or a plain test) before fixing it: CI never draws it by chance.

A test's own @settings should set only what the profiles leave open (e.g. health checks): a max_examples,
derandomize or database there would override the profile.
"""
import os
import signal
import sys
from pathlib import Path

from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

os.environ.setdefault("MUJOCO_GL", "egl")
# A suite started in the background (`nohup ... &`) inherits SIGINT ignored; the Ctrl-C tests send a real SIGINT and
# expect what a terminal gives Python: KeyboardInterrupt from its default handler.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Importing torch (timm, torchvision) after a MuJoCo EGL context exists segfaults the process; importing it
# first is fine. Tests mix rendering and models in one process, so torch is imported before any test runs.
import torch  # noqa: E402,F401
import timm  # noqa: E402,F401

settings.register_profile("ci", derandomize=True, database=None, print_blob=True, max_examples=250, deadline=None)
settings.register_profile("explore", max_examples=2000, deadline=None, print_blob=True,
                          database=DirectoryBasedExampleDatabase(ROOT / ".hypothesis" / "examples"))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
