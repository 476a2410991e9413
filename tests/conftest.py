import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Importing torch (timm, torchvision) after a MuJoCo EGL context exists segfaults the process; importing it
# first is fine. Tests mix rendering and models in one process, so torch is imported before any test runs.
import torch  # noqa: E402,F401
import timm  # noqa: E402,F401
