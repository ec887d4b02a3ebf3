"""Serving on Triton: model repositories (production GPU and local CPU variants) and the bundled server launcher."""
