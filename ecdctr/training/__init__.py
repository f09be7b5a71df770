"""Fitting models: the training loop, checkpoints and snapshots, distribution strategies."""
