"""Speed, side by side in one run: sft-lab against a baseline (TRL, lm-eval's hf model, an earlier commit)."""
