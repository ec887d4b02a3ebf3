"""The package side of the Kubeflow pipeline (components/): what each component body calls, kept testable without KFP."""
