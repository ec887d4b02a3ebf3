"""What each Kubeflow component body (components/) calls, one module per step; testable without KFP."""
