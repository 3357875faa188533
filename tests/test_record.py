import json
import multiprocessing as mp

import pytest

from conftest import compose
from sft_lab.config import to_container
from sft_lab.record import RunLocked, fingerprint, read_record, run_lock, write_record


def fp(overrides):
    return fingerprint(to_container(compose(overrides)))


def test_fingerprint_is_stable_and_tracks_what_is_trained():
    base = fp([])
    assert base == fp([])  # same config, same fingerprint, across compositions
    for change in (["lr=1e-5"], ["data=dolly"], ["lora.r=16"], ["seed=1"], ["template=chatml"], ["eval.limit=10"]):
        assert fp(change) != base, change
    # where the run is stored or logged does not change what it is
    for same in (["paths.runs_dir=/elsewhere"], ["tracking=none"], ["tracking.mode=online"], ["force=true"]):
        assert fp(same) == base, same


def test_record_round_trip_is_atomic(tmp_path):
    record = {"status": "finished", "eval": {"arc_easy": {"acc": {"value": 0.5, "stderr": 0.1}}}}
    write_record(tmp_path, record)
    back = read_record(tmp_path)
    assert back["status"] == "finished" and back["eval"] == record["eval"]
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp file left behind
    json.loads((tmp_path / "record.json").read_text())


def _hold_lock(path, ready, release):
    with run_lock(path):
        ready.set()
        release.wait(30)


def test_a_running_run_is_locked_against_a_second_process(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunLocked):
            with run_lock(tmp_path):
                pass
    finally:
        release.set()
        p.join()
    with run_lock(tmp_path):  # free again once the holder is gone
        pass
