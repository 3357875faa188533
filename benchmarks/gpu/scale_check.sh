#!/usr/bin/env bash
# GPU check for runs beyond one process and the memory options (issue: beyond one process).
#  1. torchrun (nccl) on the toy setting: the launcher path on CUDA, bf16, rank 0 records.
#  2. A 300M-parameter random Llama (model=tiny with a bigger arch), LoRA r8, bf16: gradient
#     checkpointing and attention kernels as factors; peak GPU memory and loss curves per run.
# Carry the pinned wheels (.whl) and a tokenizer folder (.gpu/tok), as benchmarks/gpu/toy_check.sh says.
set -x; OUT=${OUT:-/tmp/gpu_check}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SFT_LAB_CACHE_DIR=/tmp/cache
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, transformers, peft; print(torch.__version__, torch.cuda.get_device_name(), transformers.__version__, peft.__version__)"
python3 -c "import bitsandbytes" 2>&1 | tail -1
TOY="+experiment=toy model.name_or_path=$PWD/.gpu/tok paths.data_dir=/tmp"
time python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m sft_lab.run $TOY seed=0 \
  paths.runs_dir=/tmp/runs_torchrun > $OUT/torchrun.log 2>&1; echo "torchrun rc=$?"
grep -E "Error|error|Finished|Traceback" $OUT/torchrun.log | head
BIG="model.arch.hidden_size=1024 model.arch.intermediate_size=4096 model.arch.num_hidden_layers=16 model.arch.num_attention_heads=16 model.arch.num_key_value_heads=16"
time python3 -m sft_lab.run -m $TOY $BIG lora=r8 lr=1e-3 train.max_steps=30 train.batch_size=256 train.logging_steps=5 \
  train.gradient_checkpointing=false,true model.attn_implementation=sdpa,eager paths.runs_dir=/tmp/runs_mem \
  > $OUT/memory.log 2>&1; echo "memory grid rc=$?"
grep -E "Error|error|Traceback" $OUT/memory.log | head
python3 - <<'PY' | tee $OUT/summary.json
import json, glob
out = []
for p in sorted(glob.glob("/tmp/runs_torchrun/*/record.json") + glob.glob("/tmp/runs_mem/*/record.json")):
    r = json.load(open(p)); t = r.get("train") or {}
    out.append({"runs": p.split("/")[2], "status": r["status"], "device": r["env"]["device"],
                "world_size": r["env"].get("world_size"), "params": (t.get("parameters") or {}).get("total"),
                "gradient_checkpointing": r["config"]["train"]["gradient_checkpointing"], "ran_checkpointed": t.get("gradient_checkpointing"),
                "attn": r["config"]["model"]["attn_implementation"], "peak_gpu_mb": t.get("peak_gpu_mb"),
                "wall_s": t.get("wall_s"), "tokens_per_s": t.get("tokens_per_s"),
                "loss_curve": [round(c["loss"], 4) for c in t.get("loss_curve", [])],
                "eval": {k: {m: round(v["value"], 4) for m, v in ms.items()} for k, ms in (r.get("eval") or {}).items()},
                "error": r.get("error")})
print(json.dumps(out, indent=1))
PY
