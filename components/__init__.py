"""Kubeflow Pipelines components for EQFace (one folder per component) and the pipeline that wires them.

Each ``<name>/component.py`` imports only kfp (and this folder's constants) at module level; its body imports the
``eqface`` package and calls one function of ``eqface.workflow``. ``pipeline.py`` wires them and compiles the YAML;
``local_run.py`` runs the whole pipeline here. This package sits above ``eqface``: it imports eqface, never the reverse
(only the CLI, the top layer, imports it, inside its pipeline commands).
"""
