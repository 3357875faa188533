"""Export: the merged model loads without peft and gives the adapted model's logits."""

from __future__ import annotations

import json
import os

import pytest
from conftest import TINY, run_cli


@pytest.mark.e2e
def test_merged_export_loads_alone_and_matches_the_adapted_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from sft_lab.export import load_adapted

    runs = tmp_path / "runs"
    # A larger learning rate so the adapter moves the logits measurably.
    out = run_cli([*TINY, "lr=5e-2", "eval.tasks=[heldout]", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [run_dir] = [p.parent for p in runs.glob("*/record.json")]
    assert json.loads((run_dir / "record.json").read_text())["status"] == "finished"

    out = run_cli([str(run_dir), "--merge", "--out", str(tmp_path / "merged")], cwd=tmp_path, module="sft_lab.export")
    assert out.returncode == 0, out.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not hasattr(merged, "peft_config")
    adapted, tokenizer = load_adapted(run_dir)
    ids = tokenizer("Give three tips for staying healthy.", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = adapted.eval()(ids).logits, merged(ids).logits
        base = adapted.get_base_model()
        with adapted.disable_adapter():
            untrained = base(ids).logits
    assert (want - untrained).abs().max() > 1e-3  # the adapter changed the model
    assert torch.allclose(got, want, atol=1e-4)
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "merged").iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~umask, modes  # the usual mode, not 0600
    again = run_cli([str(run_dir), "--merge", "--out", str(tmp_path / "merged")], cwd=tmp_path, module="sft_lab.export")
    assert again.returncode == 2 and "not empty" in again.stderr
    again = run_cli([str(run_dir), "--merge", "--out", str(tmp_path / "merged"), "--overwrite"], cwd=tmp_path,
                    module="sft_lab.export")
    assert again.returncode == 0 and not [p for p in tmp_path.iterdir() if ".export-" in p.name]


def test_export_names_what_is_missing(tmp_path):
    out = run_cli([str(tmp_path), "--merge", "--out", str(tmp_path / "m")], cwd=tmp_path, module="sft_lab.export")
    assert out.returncode == 2 and "holds no record.json" in out.stderr
