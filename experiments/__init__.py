"""The paper's experiments at CPU scale: one module per experiment, each writing results/<name>/ (report, JSON, PNGs).

Run from the repository root, e.g. ``.venv/bin/python -m experiments.e1_illumination``; every report states its
protocol, model files, seeds and runtime so that the same command reproduces the same tables.
"""
