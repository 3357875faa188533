"""Tuned ablations: `python -m sft_lab.ablate ABLATION_FILE [overrides...] [--workers N] [--storage URL]`.

Which arm is best, fairly: every arm gets the same budget (train.max_tokens in `fixed`), its own Optuna study
tunes it on dev items, its best configuration is replicated with fresh seeds, and the table reports test
items that no tuning trial read. Then the tuning curves (expected best dev score against the number of
trials) and the learning curves (held-out loss against answer tokens trained).

Modules: spec (the ablation file), run (tuning and final runs), report (table, curves, ablation.md), cli.
"""
