"""Kubeflow Pipelines components for EQFace (one folder per component) and the pipeline that wires them.

Each ``<name>/component.py`` imports only kfp (and this folder's constants) at module level; its body imports the
``eqface`` package and calls one function of ``eqface.workflow``.
"""
