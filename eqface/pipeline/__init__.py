"""The package side of the Kubeflow pipeline (components/): what each component body calls, testable without KFP."""
