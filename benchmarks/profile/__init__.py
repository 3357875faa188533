"""Profiles of the production code path: where a training step's or an evaluation's time goes."""
