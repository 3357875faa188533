"""Nothing lost, nothing executed: corrupt state on disk, crafted caches, forced re-runs that fail."""

import json
import pickle

import numpy as np
import pytest
from conftest import TINY, compose, run_cli

from sft_lab.analysis.collect import collect
from sft_lab.data import build_mixture
from sft_lab.record import CorruptRecord, RunRecord, read_record, write_record
from sft_lab.tokens import tokenise_mixture


class Boom:
    def __reduce__(self):  # what a crafted pickle does when loaded: run code
        return (open, ("/tmp/sft_lab_pwned", "w"))


def _mixture(data_dir):
    cfg = compose(["data=dolly", "data.examples=32"])
    return cfg, build_mixture(cfg.data, str(data_dir), 0)


def test_a_crafted_token_cache_runs_no_code_and_is_rebuilt(tmp_path, data_dir, tokenizer):
    cfg, mix = _mixture(data_dir)
    first = tokenise_mixture(mix, cfg.template, tokenizer, 128, str(tmp_path))
    (entry,) = (tmp_path / "tokens").glob("*.npz")
    for payload in (pickle.dumps(Boom()), b"not a cache at all"):
        entry.write_bytes(payload)
        again = tokenise_mixture(mix, cfg.template, tokenizer, 128, str(tmp_path))
        assert not again.from_cache and again.train == first.train
    import os

    assert not os.path.exists("/tmp/sft_lab_pwned")
    np.savez(entry, sources=np.array(["x"]), meta=np.array("{}"))  # valid npz, wrong shape
    assert not tokenise_mixture(mix, cfg.template, tokenizer, 128, str(tmp_path)).from_cache
    assert tokenise_mixture(mix, cfg.template, tokenizer, 128, str(tmp_path)).from_cache  # the rebuilt entry is good


def test_a_token_cache_with_out_of_vocabulary_ids_is_rebuilt_not_a_crash(tmp_path, data_dir, tokenizer, caplog):
    cfg, mix = _mixture(data_dir)
    first = tokenise_mixture(mix, cfg.template, tokenizer, 128, str(tmp_path))
    (entry,) = (tmp_path / "tokens").glob("*.npz")
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_ids"] = arrays["train_ids"] + len(tokenizer)  # right shapes, ids past the vocabulary
    np.savez(entry, **arrays)
    again = tokenise_mixture(mix, cfg.template, tokenizer, 128, str(tmp_path))
    assert not again.from_cache and again.train == first.train
    assert "outside the tokenizer" in caplog.text and str(entry) in caplog.text


def test_a_corrupt_record_is_named_and_skipped_by_tables(tmp_path):
    good = tmp_path / "a"
    write_record(good, RunRecord(status="finished", fingerprint="a", run_dir=str(good), config={"seed": 0},
                                 eval={"t": {"acc": {"value": 1.0, "stderr": None}}}))
    bad = tmp_path / "b"
    bad.mkdir()
    (bad / "record.json").write_text('{"status": "fini')
    with pytest.raises(CorruptRecord) as e:
        read_record(bad)
    assert str(bad / "record.json") in str(e.value) and "force=true" in str(e.value)
    df, excluded = collect(tmp_path)
    assert len(df) == 1 and excluded["corrupt"] == 1


@pytest.mark.e2e
def test_forced_rerun_with_bad_input_keeps_the_finished_run_and_corrupt_records_recover(tmp_path):
    runs = tmp_path / "runs"
    args = [*TINY, "eval.tasks=[heldout]", f"paths.runs_dir={runs}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    (run_dir,) = [p.parent for p in runs.glob("*/record.json")]
    before = (run_dir / "record.json").read_text()
    out = run_cli([*args, "force=true", "paths.data_dir=/nonexistent"], cwd=tmp_path)
    assert out.returncode == 2 and "/nonexistent" in out.stderr
    assert (run_dir / "record.json").read_text() == before  # nothing lost
    assert not list(run_dir.glob("previous/*"))

    (run_dir / "record.json").write_text(before[: len(before) // 2])  # a half-written file
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 2 and str(run_dir / "record.json") in out.stderr and "force=true" in out.stderr
    out = run_cli([*args, "force=true"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run_dir / "record.json").read_text())["status"] == "finished"
    assert len(list(run_dir.glob("previous/*/record.json"))) == 1  # the corrupt file, kept aside


@pytest.mark.e2e
def test_a_failure_after_training_keeps_the_training_and_a_relaunch_only_evaluates(tmp_path, data_dir):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    items = tmp_path / "items.jsonl"  # not there yet: evaluation fails after training
    (tasks / "mine.yaml").write_text(
        f"task: mine\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {json.dumps(str(items))}}}}}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\nmetric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "metadata: {version: 1.0}\n")
    runs = tmp_path / "runs"
    args = [*TINY, f"eval.include_path={tasks}", "eval.tasks=[mine]", f"paths.runs_dir={runs}"]
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode != 0
    (run_dir,) = [p.parent for p in runs.glob("*/record.json")]
    failed = json.loads((run_dir / "record.json").read_text())
    assert failed["status"] == "failed" and failed["train"]["steps"] == 4  # the training is in the record
    assert (run_dir / "adapter" / "train_result.json").is_file()
    items.write_text("".join(json.dumps({"q": f"{i} + {i} =", "choices": [str(2 * i), str(2 * i + 1)], "label": 0}) + "\n"
                             for i in range(8)))
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    done = json.loads((run_dir / "record.json").read_text())
    assert done["status"] == "finished" and "mine" in done["eval"]
    assert done["train"]["wall_s"] == failed["train"]["wall_s"]  # not trained again
    assert "Training finished in an earlier attempt" in (run_dir / "run.log").read_text()
    assert not (run_dir / "checkpoints").exists()  # dropped once the record says finished


@pytest.mark.e2e
def test_an_empty_heldout_split_is_an_input_error_before_training(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n")
    runs = tmp_path / "runs"
    out = run_cli([*TINY, "data=file", f"data.path={one}", "eval.tasks=[heldout]", f"paths.runs_dir={runs}"],
                  cwd=tmp_path)
    assert out.returncode == 2 and "heldout" in out.stderr and "data.heldout_fraction" in out.stderr
    assert not list(runs.glob("*/record.json"))


# ---------------------------------------------------------------- clear errors, not tracebacks


def test_non_utf8_data_names_file_and_line(tmp_path):
    from sft_lab.data import DataError, read_records

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "c"}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: not UTF-8"):
        list(read_records(bad))
    with pytest.raises(DataError, match="is a folder"):
        list(read_records(tmp_path))


def test_yaml_special_characters_in_the_data_dir_are_quoted(tmp_path):
    import yaml

    from sft_lab.tasks import write_tasks

    odd = tmp_path / "we}ird: {dir} #1"
    write_tasks(tmp_path / "tasks", str(odd), [{"prompt": "p", "answer": "a"}])
    task = yaml.safe_load((tmp_path / "tasks" / "arc_easy.yaml").read_text())
    assert task["dataset_kwargs"]["data_files"]["test"] == str(odd / "eval" / "arc_easy_test.jsonl")


def test_sweep_file_errors_keep_line_and_column_and_n_trials_must_be_positive(tmp_path):
    from sft_lab.sweep.cli import main
    from sft_lab.sweep.spec import SweepError, load_spec

    bad = tmp_path / "bad.yaml"
    bad.write_text("study_name: x\nspace:\n  lr: {type: float, low: 1e-5\n")
    with pytest.raises(SweepError, match=rf"{bad}:\d+:\d+: not valid YAML"):
        load_spec(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps({"study_name": "x", "space": {"lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
                                "objective": {"metrics": ["heldout.loss"], "direction": "minimize"}}))
    for n in ("0", "-3"):
        assert main([str(good), "--n-trials", n, "--workers", "0"]) == 2


def test_an_unwritable_runs_dir_is_named(tmp_path):
    from sft_lab.config import ConfigError
    from sft_lab.pipeline import run

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="paths.runs_dir"):
        run(compose([*TINY, f"paths.runs_dir={blocker}/runs"]))


def test_max_length_too_small_for_any_answer_is_named(tmp_path):
    from sft_lab.data import DataError
    from sft_lab.pipeline import run

    with pytest.raises(DataError, match="train.max_length=8"):
        run(compose([*TINY, "train.max_length=8", f"paths.runs_dir={tmp_path}/runs"]))
    assert not list((tmp_path / "runs").glob("*/record.json"))


@pytest.mark.e2e
def test_ctrl_c_marks_the_run_interrupted_and_a_relaunch_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    runs = tmp_path / "runs"
    args = [*TINY, "train.max_steps=60", "train.save_steps=5", "eval.tasks=[heldout]", f"paths.runs_dir={runs}"]
    # SIGINT as a terminal delivers it: a shell that starts pytest in the background leaves it ignored
    proc = subprocess.Popen([sys.executable, "-m", "sft_lab.run", *args], cwd=tmp_path, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("*/checkpoints/checkpoint-*/sft_lab_counts.json")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err and "Traceback" not in err
    (record,) = runs.glob("*/record.json")
    assert json.loads(record.read_text())["status"] == "interrupted"
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    done = json.loads(record.read_text())
    assert done["status"] == "finished" and done["train"]["resumed_from"]


def test_a_huge_record_is_cut_before_tokenising(tokenizer):
    import time

    from sft_lab.templates import tokenise

    conv = [{"role": "user", "content": "Summarise."}, {"role": "assistant", "content": "word " * 10_000_000}]
    start = time.perf_counter()
    t = tokenise(conv, compose().template, tokenizer, 128)
    assert time.perf_counter() - start < 5 and t.truncated and len(t.input_ids) == 128
    short = tokenise(conv[:1] + [{"role": "assistant", "content": "ok"}], compose().template, tokenizer, 128)
    assert not short.truncated


@pytest.mark.e2e
def test_a_resumed_run_sees_the_same_batches_and_keeps_its_history(tmp_path):
    """Killed at a checkpoint in the second epoch (64 examples, batch 4: 16 steps an epoch), then resumed."""
    import os

    from conftest import ROOT, kill_after_first_checkpoint

    args = [*TINY, "train.max_steps=40", "train.save_steps=20", "eval.tasks=[heldout]"]
    assert run_cli([*args, f"paths.runs_dir={tmp_path}/whole"], cwd=tmp_path).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kill_after_first_checkpoint("sft_lab.run", [*args, f"paths.runs_dir={tmp_path}/cut"], tmp_path / "cut", tmp_path, env)
    (cut,) = (tmp_path / "cut").glob("*/record.json")
    started = json.loads(cut.read_text())["started"]
    out = run_cli([*args, f"paths.runs_dir={tmp_path}/cut"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    whole = json.loads(next((tmp_path / "whole").glob("*/record.json")).read_text())
    resumed = json.loads(cut.read_text())
    assert resumed["train"]["resumed_from"].endswith("checkpoint-20")
    assert resumed["train"]["tokens_seen"] == whole["train"]["tokens_seen"]
    a, b = whole["train"]["loss_curve"], resumed["train"]["loss_curve"]
    assert [x["step"] for x in b] == [x["step"] for x in a] == list(range(1, 41))
    assert [x["loss"] for x in b] == pytest.approx([x["loss"] for x in a], abs=1e-4)
    assert resumed["train"]["first_loss"] == pytest.approx(whole["train"]["first_loss"], abs=1e-4)
    assert resumed["started"] == started and resumed["attempts"] == 2
    assert resumed["train"]["tokens_per_s"] and resumed["train"]["wall_s"] >= 0.5 * whole["train"]["wall_s"]
