#!/usr/bin/env bash
# Issue 29's GPU checks in one script of at most 8 minutes on one GPU machine:
#  1. tests/test_gpu.py: a bf16 run (padding-free, evaluated), and train.liger / train.torch_compile against it;
#  2. the training benchmark, bf16, batch 32, max length 512: sft-lab, the plain Trainer, TRL, TRL at its best
#     (padding_free + Liger), on SmolLM2-135M's shape and on TinyLlama-1.1B's shape, random weights;
#  3. an 8-job toy grid through hydra/launcher=gpus against one job x 8 / k (k: the visible GPUs).
# Offline GPU machine: carry the pinned wheels (.whl, liger-kernel and trl among them), a tokenizer folder
# (.gpu/tok) and alpaca.json (.gpdata), as benchmarks/gpu/toy_check.sh says. Writes logs and JSON lines to $OUT.
set -x; OUT=${OUT:-/tmp/gpu_check}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SFT_LAB_CACHE_DIR=/tmp/cache
export SFT_LAB_DATA_DIR=$PWD/.gpdata
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpus.csv
TOK="model.name_or_path=$PWD/.gpu/tok"
timeout 150 python3 -m pytest -q -m gpu tests/test_gpu.py > $OUT/test_gpu.log 2>&1; echo "test_gpu rc=$?"; tail -3 $OUT/test_gpu.log
SMOL="model=tiny $TOK model.arch.hidden_size=576 model.arch.intermediate_size=1536 model.arch.num_hidden_layers=30 model.arch.num_attention_heads=9 model.arch.num_key_value_heads=3"
BIG="model=tiny $TOK model.arch.hidden_size=2048 model.arch.intermediate_size=5632 model.arch.num_hidden_layers=22 model.arch.num_attention_heads=32 model.arch.num_key_value_heads=4"
timeout 120 python3 -m benchmarks.gpu.throughput --steps 20 --rounds 1 --model "$SMOL" > $OUT/throughput_135m.log 2>&1
echo "135M rc=$?"; grep -E "^\||^\{" $OUT/throughput_135m.log
timeout 150 python3 -m benchmarks.gpu.throughput --steps 10 --rounds 1 --model "$BIG" > $OUT/throughput_1b.log 2>&1
echo "1.1B rc=$?"; grep -E "^\||^\{" $OUT/throughput_1b.log
timeout 90 python3 -m benchmarks.gpu.grid_time --jobs 8 +experiment=toy $TOK paths.data_dir=/tmp > $OUT/grid.log 2>&1
echo "grid rc=$?"; grep -E "^\||^\{" $OUT/grid.log
