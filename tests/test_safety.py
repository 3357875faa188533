"""Nothing lost, nothing executed: corrupt state on disk, crafted caches, forced re-runs that fail."""

import json
import pickle

import numpy as np
import pytest

from conftest import TINY, compose, run_cli

from sft_lab.analysis.collect import collect
from sft_lab.data import build_mixture
from sft_lab.record import CorruptRecord, read_record, write_record
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


def test_a_corrupt_record_is_named_and_skipped_by_tables(tmp_path):
    good = tmp_path / "a"
    write_record(good, {"status": "finished", "config": {"seed": 0}, "eval": {"t": {"acc": {"value": 1.0}}}})
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
