import json

import pytest
from conftest import compose

from sft_lab.data import DataError, build_mixture, load_source, prompt_key


def test_alpaca_and_dolly_load_from_the_data_dir(data_dir):
    for preset, n_records in (("alpaca", 9229), ("dolly", 2996)):
        cfg = compose([f"data={preset}"])
        name, src = next(iter(cfg.data.sources.items()))
        examples, prov = load_source(name, src, str(data_dir))
        assert prov["records"] == n_records
        assert len(examples) == n_records - prov["empty_dropped"]
        assert examples[0].conversation[-1]["role"] == "assistant"


def test_heldout_never_overlaps_training(data_dir):
    cfg = compose(["data=alpaca"])
    mix = build_mixture(cfg.data, str(data_dir), seed=0)
    train = {prompt_key(e.conversation) for e in mix.train}
    held = {prompt_key(e.conversation) for e in mix.heldout}
    assert held and not train & held
    # stable across seeds: the held-out split does not move with the run seed
    mix1 = build_mixture(cfg.data, str(data_dir), seed=1)
    assert {prompt_key(e.conversation) for e in mix1.heldout} == held


def test_examples_bounds_training(data_dir):
    cfg = compose(["data=dolly", "data.examples=100"])
    mix = build_mixture(cfg.data, str(data_dir), seed=0)
    assert len(mix.train) == 100 and mix.sources["dolly"]["drawn"] == 100


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_file_source(path, fmt="auto"):
    return compose(["data=alpaca", f"data.sources.alpaca.path={path}", f"data.sources.alpaca.format={fmt}"]).data


def test_malformed_line_names_file_and_line(tmp_path):
    good = json.dumps({"instruction": "a", "context": "", "response": "b"})
    path = write(tmp_path, "bad.jsonl", f"{good}\n{good}\n{{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        build_mixture(one_file_source(path), str(tmp_path), 0)


def test_missing_field_names_the_record(tmp_path):
    path = write(tmp_path, "missing.jsonl", json.dumps({"instruction": "a", "response": "b"}) + "\n"
                 + json.dumps({"instruction": "a", "context": ""}) + "\n")
    with pytest.raises(DataError, match=r"missing\.jsonl:2: .*missing required field.*response"):
        build_mixture(one_file_source(path, "dolly"), str(tmp_path), 0)


def test_missing_file_names_the_file_and_the_hub_id(tmp_path):
    import os

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    data = one_file_source(str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match=r"nope\.json.*tatsu-lab/alpaca"):
        build_mixture(data, str(tmp_path), 0)


def test_data_files_are_never_modified(data_dir):
    import hashlib

    before = hashlib.sha256((data_dir / "dolly.jsonl").read_bytes()).hexdigest()
    build_mixture(compose(["data=dolly"]).data, str(data_dir), 0)
    assert hashlib.sha256((data_dir / "dolly.jsonl").read_bytes()).hexdigest() == before
