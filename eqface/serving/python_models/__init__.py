"""Sources of the python-backend ``model.py`` files; the repository writer copies them into version folders.

They import ``triton_python_backend_utils``, which exists only inside Triton's python-backend stub: never import
these modules outside Triton.
"""
