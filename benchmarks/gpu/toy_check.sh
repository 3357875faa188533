#!/usr/bin/env bash
# GPU check: the toy study (tiny model, CUDA, bf16) through the real CLI, then the ablation table.
# For an offline GPU machine that has torch but not the rest: carry the pinned wheels in .whl/ (pip download
# --no-deps --python-version 3.12 ...) and a tokenizer folder in .gpu/tok (SmolLM2's, saved with save_pretrained).
# Online, `pip install -e .` replaces the first line. Writes run.log, table.md and records.json to $OUT.
set -x; OUT=${OUT:-/tmp/gpu_check}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SFT_LAB_CACHE_DIR=/tmp/cache
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, transformers, peft, lm_eval; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.is_bf16_supported(), transformers.__version__, peft.__version__)"
time python3 -m sft_lab.run -m +experiment=toy model.name_or_path=$PWD/.gpu/tok data=toy_first,toy_last seed=0,1,2 \
  paths.runs_dir=/tmp/runs paths.data_dir=/tmp 2>&1 | tee $OUT/run.log | grep -E "error|Error|Finished|finished|Traceback" | head -30
python3 analysis/ablation_table.py /tmp/runs --rows data --ref data=toy_first > $OUT/table.md 2> $OUT/table.err; cat $OUT/table.md $OUT/table.err | head -30
python3 - <<'PY' > $OUT/records.json
import json, glob
out = []
for p in sorted(glob.glob("/tmp/runs/*/record.json")):
    r = json.load(open(p))
    out.append({"data": r["config"]["data"]["name"], "seed": r["config"]["seed"], "baseline": r["config"]["baseline"],
                "status": r["status"], "device": r["env"]["device"], "peak_rss_mb": r["env"].get("peak_rss_mb"),
                "train": {k: r.get("train", {}).get(k) for k in ("first_loss", "final_loss", "wall_s", "tokens_per_s", "steps")},
                "eval": {t: {m: v["value"] for m, v in ms.items()} for t, ms in r.get("eval", {}).items()},
                "error": r.get("error")})
print(json.dumps(out, indent=1))
PY
cat $OUT/records.json | head -80
