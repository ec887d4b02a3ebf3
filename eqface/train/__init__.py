"""The three EQFace training steps, their schedules, checkpoints and the 1 → 2 → (3 → 2)×k plan that chains them."""
