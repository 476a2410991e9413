"""Experiments on top of everything: recipes, the StaKe ablation, front-end pretraining (ground), diagnostics,
benchmarks.

Never imported by the top-level modules, world/ or robot/. Each script runs as a file from any directory
(`python lab/recipe.py ...`).
"""
