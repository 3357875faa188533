"""Real runs of the tiny model through the CLI: training, lm-eval, record, W&B offline, multirun, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, kill_after_first_checkpoint, run_cli

pytestmark = pytest.mark.e2e


def records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*/record.json"))]


def test_tiny_run_end_to_end_then_relaunch_skips(tmp_path):
    runs = tmp_path / "runs"
    args = [*TINY, "tracking=wandb", f"paths.runs_dir={runs}"]
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(runs)
    assert rec["status"] == "finished"
    assert set(rec) >= {"status", "fingerprint", "config", "train", "eval", "eval_protocol", "data", "env"}
    assert rec["train"]["steps"] == 4 and rec["train"]["tokens_seen"] > 0 and rec["train"]["final_loss"] > 0
    acc = rec["eval"]["arc_easy"]["acc"]
    assert 0 <= acc["value"] <= 1 and acc["stderr"] is not None
    assert rec["eval"]["heldout"]["bits_per_byte"]["value"] > 0
    assert rec["eval_protocol"]["limit"] == 8 and rec["eval_protocol"]["n_shot"]["arc_easy"] == 0
    assert rec["data"]["sources"]["alpaca"]["examples"] == 64
    assert rec["config"]["lr"] == 2e-4 and rec["env"]["packages"]["peft"]
    run_dir = Path(rec["run_dir"])
    assert run_dir.name == rec["fingerprint"][:16]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "samples" / "arc_easy.jsonl").is_file()
    assert list((runs / "wandb").glob("offline-run-*"))  # a real W&B offline run

    # relaunch: no training, exit 0, record untouched
    wandb_runs = len(list((runs / "wandb").glob("offline-run-*")))
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Already finished" in out.stdout
    assert records(runs)[0]["updated"] == rec["updated"]
    assert len(list((runs / "wandb").glob("offline-run-*"))) == wandb_runs


def test_multirun_grid_gives_four_records_in_one_group(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli(["-m", "data=alpaca,dolly", "lr=1e-5,2e-5", *TINY, "eval.tasks=[heldout]",
                   f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = records(runs)
    assert len(recs) == 4 and all(r["status"] == "finished" for r in recs)
    assert len({r["fingerprint"] for r in recs}) == 4
    assert {(r["config"]["data"]["name"], r["config"]["lr"]) for r in recs} == {
        ("alpaca", 1e-5), ("alpaca", 2e-5), ("dolly", 1e-5), ("dolly", 2e-5)}
    assert len({r["group"] for r in recs}) == 1 and recs[0]["group"]


def test_periodic_heldout_loss_on_a_subset_evaluated_loss_on_the_whole_split(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli(["-m", "train.eval_examples=0,4", *TINY, "train.eval_steps=2", "eval.tasks=[heldout]",
                   f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    by_n = {r["config"]["train"]["eval_examples"]: r for r in records(runs)}
    whole, subset = by_n[0]["train"], by_n[4]["train"]
    assert [c["step"] for c in whole["heldout_curve"]] == [c["step"] for c in subset["heldout_curve"]] == [2, 4]
    assert abs(subset["heldout_curve"][-1]["loss"] - whole["heldout_curve"][-1]["loss"]) > 1e-6  # 4 of 16 items
    # The evaluation phase scores the whole split, whatever the periodic subset was: same model, same loss.
    losses = [by_n[n]["eval"]["heldout"]["loss"]["value"] for n in (0, 4)]
    assert abs(losses[0] - losses[1]) < 1e-4
    # Per answer token, against the trainer's mean of batch means over the same whole split: close, not equal.
    assert abs(losses[0] - whole["heldout_curve"][-1]["loss"]) < 0.05 * losses[0]


def test_bad_data_fails_before_training_with_no_record(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": oops}\n')
    runs = tmp_path / "runs"
    out = run_cli([*TINY, f"data.sources.alpaca.path={bad}", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 2
    assert f"{bad}:2: malformed JSON" in out.stderr
    assert records(runs) == []


def test_unknown_task_and_missing_model_fail_before_training(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli([*TINY, "eval.tasks=[arc_eazy]", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 2 and "arc_eazy" in out.stderr
    out = run_cli([*TINY, "model.init=pretrained", f"model.name_or_path={tmp_path}/no_model", f"paths.runs_dir={runs}"],
                  cwd=tmp_path)
    assert out.returncode == 2 and "no_model" in out.stderr
    assert records(runs) == []


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    args = [*TINY, "train.max_steps=30", "train.save_steps=3", "eval.tasks=[heldout]", f"paths.runs_dir={runs}"]
    kill_after_first_checkpoint("sft_lab.run", args, runs, tmp_path, {**os.environ, "PYTHONPATH": str(ROOT)})
    [rec] = records(runs)
    assert rec["status"] == "running"  # killed: never marked finished
    cut_off = Path(rec["run_dir"]) / "checkpoints" / "checkpoint-29"  # a kill in the middle of a save
    cut_off.mkdir()
    (cut_off / "adapter_config.json").write_text("{")

    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(runs)
    assert rec["status"] == "finished" and rec["train"]["steps"] == 30
    assert "checkpoint-" in rec["train"]["resumed_from"] and "checkpoint-29" not in rec["train"]["resumed_from"]
    assert "save was cut off" in out.stdout + out.stderr


def test_force_reruns_and_keeps_the_old_results(tmp_path):
    runs = tmp_path / "runs"
    args = [*TINY, "eval.tasks=[heldout]", f"paths.runs_dir={runs}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    [first] = records(runs)
    out = run_cli([*args, "force=true"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [second] = records(runs)
    assert second["fingerprint"] == first["fingerprint"] and second["started"] >= first["started"]
    [old] = (Path(first["run_dir"]) / "previous").glob("*/record.json")
    assert json.loads(old.read_text())["updated"] == first["updated"]  # the finished result is kept, untouched


def test_mixture_run_accounts_per_source(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli([*TINY, "data=alpaca_dolly", "data.examples=40", "eval.tasks=[heldout]", f"paths.runs_dir={runs}"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(runs)
    sources = rec["data"]["sources"]
    assert sources["alpaca"]["drawn"] == sources["dolly"]["drawn"] == 20  # 50/50 of 40
    for s in sources.values():  # what max_length left with no answer to learn is dropped, and said so
        assert s["examples"] + s.get("no_answer_dropped", 0) == 20
    for name in ("alpaca", "dolly"):
        s = sources[name]
        assert s["tokens"] >= s["label_tokens"] > 0 and "truncated" in s and "duplicates_removed" in s
    seen = [s["trained_on"]["examples"] for s in sources.values()]
    assert sum(seen) == rec["train"]["steps"] * 4  # what the trainer actually saw, per source
    assert 0 <= rec["train"]["padding_fraction"] < 0.5


def test_own_file_trains_and_templates_are_a_factor(tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"instruction": f"Say {i}.", "context": "", "response": f"{i}", "category": "x"})
                            + "\n" for i in range(40)))
    runs = tmp_path / "runs"
    out = run_cli(["-m", "template=alpaca,chatml", *TINY, "data=file", f"data.path={mine}", "data.format=dolly",
                   "eval.tasks=[heldout]", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = records(runs)
    assert len(recs) == 2 and {r["config"]["template"]["name"] for r in recs} == {"alpaca", "chatml"}
    assert recs[0]["fingerprint"] != recs[1]["fingerprint"]
    assert recs[0]["data"]["fingerprint"] != recs[1]["data"]["fingerprint"]
    assert all(r["status"] == "finished" and r["data"]["sources"]["mine"]["examples"] > 30 for r in recs)


def test_every_shipped_benchmark_task_evaluates(tmp_path):
    runs = tmp_path / "runs"
    tasks = "arc_easy,arc_challenge,boolq,piqa,winogrande,openbookqa"
    out = run_cli([*TINY, f"eval.tasks=[{tasks}]", "eval.limit=4", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [rec] = records(runs)
    for task in tasks.split(","):
        assert 0 <= rec["eval"][task]["acc"]["value"] <= 1, task
        assert rec["eval_protocol"]["task_versions"][task] == 1.0


def test_gradient_checkpointing_and_eager_attention_train_the_same_model(tmp_path):
    """Memory options change how the step is computed, not what is learnt."""
    runs = tmp_path / "runs"
    out = run_cli(["-m", *TINY, "eval.tasks=[heldout]", "train.gradient_checkpointing=false,true",
                   "model.attn_implementation=sdpa,eager", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    curves = {(r["config"]["train"]["gradient_checkpointing"], r["config"]["model"]["attn_implementation"]):
              [c["loss"] for c in r["train"]["loss_curve"]] for r in records(runs)}
    assert len(curves) == 4
    assert {r["train"]["gradient_checkpointing"] for r in records(runs)
            if r["config"]["train"]["gradient_checkpointing"]} == {True}  # it really ran checkpointed
    reference = curves[(False, "sdpa")]
    for key, curve in curves.items():
        assert max(abs(a - b) for a, b in zip(curve, reference)) < 1e-4, key


def test_what_a_run_leaves_behind_and_prints(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli(["-m", *TINY, "data=alpaca,dolly", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = records(runs)
    assert len(recs) == 2
    # The console: each run's summary with numbers, then the grid's ablation table; no stringified dicts.
    assert out.stdout.count("  train: loss ") == 2 and "arc_easy/acc" in out.stdout
    assert "Ablation table of this grid" in out.stdout and "| alpaca |" in out.stdout and "| dolly |" in out.stdout
    assert "'loss': '" not in out.stdout + out.stderr
    assert "Overwriting default num_fewshot" not in out.stdout + out.stderr
    import csv

    index = {row["name"]: row for row in csv.DictReader((runs / "index.csv").open())}
    for r in recs:
        folder = Path(r["run_dir"])
        assert index[r["name"]]["status"] == "finished" and index[r["name"]]["path"] == r["run_dir"]
        assert float(index[r["name"]]["arc_easy/acc"]) == round(r["eval"]["arc_easy"]["acc"]["value"], 4)
        assert (runs / "by-name" / r["name"]).resolve() == folder.resolve()
        assert "data=" in " ".join(r["overrides"])
        assert (folder / ".hydra" / "config.yaml").is_file() and (folder / ".hydra" / "hydra.yaml").is_file()
        assert "lr: 0.0002" in (folder / ".hydra" / "config.yaml").read_text()
        assert "step 1/4: loss " in (folder / "run.log").read_text()
        # lm-eval's own outputs, in its own format: prompts and log-likelihoods per item
        [results] = (folder / "lm_eval" / "model").glob("results_*.json")
        assert "arc_easy" in json.loads(results.read_text())["results"]
        [samples] = (folder / "lm_eval" / "model").glob("samples_arc_easy_*.jsonl")
        first = json.loads(samples.read_text().splitlines()[0])
        assert {"doc", "arguments", "resps", "target"} <= set(first)


def test_micro_batches_train_exactly_like_the_whole_batch(tmp_path):
    """train.micro_batch_size splits each batch into passes whose gradients add up: the same examples per
    step, the same losses; only the memory changes. Null (on CPU) cuts passes by tokens instead of rows,
    each pass's rows laid end to end without padding."""
    runs = tmp_path / "runs"
    out = run_cli(["-m", "train.micro_batch_size=null,1,4", *TINY, "eval.tasks=[heldout]", "train.grad_accum=2",
                   "lr=1e-2", "lora.dropout=0", f"paths.runs_dir={runs}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    by_micro = {r["train"]["micro_batch_size"]: r for r in records(runs)}
    assert set(by_micro) == {None, 1, 4}
    by_tokens, one, whole = by_micro[None], by_micro[1], by_micro[4]
    from sft_lab.cpu.passes import PASS_TOKENS

    assert by_tokens["train"]["pass_tokens"] == PASS_TOKENS and whole["train"]["pass_tokens"] is None
    layers = 2  # model=tiny: every projection, norm and MLP of its 2 layers trained fused
    assert by_tokens["train"]["fused_ops"] == {"lora": 7 * layers, "rms_norm": 2 * layers + 1, "swiglu": layers}
    for side in (one, by_tokens):
        assert side["train"]["tokens_seen"] == whole["train"]["tokens_seen"]
        assert side["train"]["trained_on"] == whole["train"]["trained_on"]
        curves = [[c["loss"] for c in r["train"]["loss_curve"]] for r in (side, whole)]
        assert len(curves[0]) == 4 and max(abs(a - b) for a, b in zip(*curves)) < 1e-5
        assert abs(side["eval"]["heldout"]["loss"]["value"] - whole["eval"]["heldout"]["loss"]["value"]) < 1e-5
        assert side["train"]["padded_tokens"] < whole["train"]["padded_tokens"]  # each pass pads to its own longest
    assert by_tokens["train"]["padding_fraction"] == 0  # each pass's rows laid end to end (sft_lab.cpu.unpadded)


def test_loss_on_label_positions_only_trains_exactly_like_the_full_logits_loss(tmp_path):
    """sft-lab skips the LM head on prompt and padding positions; the training must not change."""
    args = [*TINY, "eval.tasks=[heldout]", "train.grad_accum=2", "lr=1e-2"]
    curves, recs = {}, {}
    for side, switch in (("label_only", []), ("full", ["train.fast_path_off=[label_positions]"])):
        runs = tmp_path / side
        out = subprocess.run([sys.executable, "-m", "sft_lab.run", *args, *switch, f"paths.runs_dir={runs}"],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        [recs[side]] = records(runs)
        curves[side] = [c["loss"] for c in recs[side]["train"]["loss_curve"]]
    assert max(abs(a - b) for a, b in zip(curves["label_only"], curves["full"])) < 1e-5
    # the switch is recorded, not fingerprinted: the same config, the same folder name
    assert recs["full"]["fingerprint"] == recs["label_only"]["fingerprint"]
    assert recs["full"]["env"]["switches"]["train.fast_path_off"] == ["label_positions"]
    fast = recs["full"]["train"]["fast_path"]
    assert not fast["label_positions"] and fast["why_not"]["label_positions"] == "train.fast_path_off"
    assert all(recs["label_only"]["train"]["fast_path"][p] for p in ("label_positions", "passes", "fused"))
