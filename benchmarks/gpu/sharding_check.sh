#!/usr/bin/env bash
# GPU check for sharded training and QLoRA (issue: beyond one process). One GPU is enough:
#  1. FSDP2 through `accelerate launch --config_file conf/accelerate/fsdp.yaml` (one rank), on the toy
#     setting, full fine-tuning and LoRA r8, each against the same config in one plain process: the loss
#     curves and toy scores should agree (the sharded weights are gathered, saved and evaluated by rank 0).
#  2. QLoRA (model.load_in_4bit=true) on SmolLM2-135M's architecture saved with random weights, against the
#     same run in bf16: a finished record, its peak GPU memory and loss.
# Offline GPU machine: carry the pinned wheels (.whl), a tokenizer folder (.gpu/tok), bitsandbytes (.bnb,
# unpacked; its CUDA 13 library is enough) and alpaca.json (.gpdata), as benchmarks/gpu/toy_check.sh says.
set -x; OUT=${OUT:-/tmp/gpu_check}; LOGS=/tmp/gpu_logs; mkdir -p $OUT $LOGS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.bnb:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SFT_LAB_CACHE_DIR=/tmp/cache
export SFT_LAB_DATA_DIR=$PWD/.gpdata
python3 -c "import torch, transformers, peft, accelerate, bitsandbytes; print(torch.__version__, torch.cuda.get_device_name(), transformers.__version__, peft.__version__, accelerate.__version__, bitsandbytes.__version__)"
TOY="+experiment=toy model.name_or_path=$PWD/.gpu/tok paths.data_dir=/tmp seed=0"
for lora in full r8; do
  lr=$([ $lora = full ] && echo 3e-3 || echo 1e-2)
  python3 -m accelerate.commands.launch --config_file conf/accelerate/fsdp.yaml --num_processes 1 -m sft_lab.run $TOY \
    lora=$lora lr=$lr paths.runs_dir=/tmp/runs_fsdp > $LOGS/fsdp_$lora.log 2>&1; echo "fsdp $lora rc=$?"
  python3 -m sft_lab.run $TOY lora=$lora lr=$lr paths.runs_dir=/tmp/runs_single > $LOGS/single_$lora.log 2>&1
  echo "single $lora rc=$?"
done
grep -hE "Error|error:|Traceback" $LOGS/*.log | head -20
python3 - <<'PY'
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
tok = AutoTokenizer.from_pretrained(".gpu/tok")
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained("/tmp/smol_random"); tok.save_pretrained("/tmp/smol_random")
PY
Q="model.name_or_path=/tmp/smol_random data=alpaca data.examples=256 train.max_steps=30 train.batch_size=8 eval.tasks=[heldout] tracking=none paths.runs_dir=/tmp/runs_qlora"
python3 -m sft_lab.run -m $Q model.load_in_4bit=false,true > $LOGS/qlora.log 2>&1; echo "qlora grid rc=$?"
grep -E "Error|error:|Traceback" $LOGS/qlora.log | head
python3 - <<'PY' | tee $OUT/sharding_summary.json
import json, glob
out = []
for p in sorted(glob.glob("/tmp/runs_*/*/record.json")):
    r = json.load(open(p)); t = r.get("train") or {}; c = r["config"]
    out.append({"runs": p.split("/")[2], "status": r["status"], "device": r["env"]["device"],
                "world_size": r["env"].get("world_size"), "sharding": r["env"].get("sharding"), "lora_r": c["lora"]["r"],
                "load_in_4bit": c["model"]["load_in_4bit"], "params": (t.get("parameters") or {}).get("total"),
                "peak_gpu_mb": t.get("peak_gpu_mb"), "wall_s": t.get("wall_s"), "tokens_per_s": t.get("tokens_per_s"),
                "loss_curve": [round(x["loss"], 4) for x in t.get("loss_curve", [])],
                "eval": {k: {m: round(v["value"], 4) for m, v in ms.items()} for k, ms in (r.get("eval") or {}).items()},
                "error": r.get("error")})
print(json.dumps(out, indent=1))
PY
tar czf $OUT/sharding_logs.tgz -C /tmp gpu_logs
