"""Optuna sweeps: `python -m sft_lab.sweep SWEEP_FILE [--n-trials N] [--workers N] [--storage URL]
[--study-name NAME] [overrides...]`.

Optuna is driven here, not through Hydra's sweeper: each trial's overrides become a config through
Hydra's compose API, and the same pipeline as `python -m sft_lab.run` runs it, reporting the held-out
loss every `prune_every` steps so that the pruner can stop it.

Trials are counted exactly: the driver tops the study up with queued (WAITING) trials until it holds
n_trials, and workers only take queued trials, each claimed atomically by the storage. A rerun with a
larger --n-trials queues the difference. A dead worker's trial (RDB storages: no heartbeat for
`grace_period` seconds) is failed and queued again with the same parameters; its run resumes from
its checkpoint.

Modules: spec (the sweep file), queue (storage and trial queue), trial (one trial through the
run pipeline), cli (the command).
"""
