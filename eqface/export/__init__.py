"""Exporting trained networks to ONNX, the file every serving variant runs."""
