import json
import multiprocessing as mp

import pytest
from conftest import compose

from sft_lab.config import to_container
from sft_lab.record import (
    VERSION,
    CorruptRecord,
    RunLocked,
    RunRecord,
    fingerprint,
    read_record,
    run_lock,
    write_record,
)


def fp(overrides):
    return fingerprint(to_container(compose(overrides)))


def test_fingerprint_is_stable_and_tracks_what_is_trained():
    base = fp([])
    assert base == fp([])  # same config, same fingerprint, across compositions
    for change in (["lr=1e-5"], ["data=dolly"], ["lora.r=16"], ["seed=1"], ["template=chatml"], ["eval.limit=10"]):
        assert fp(change) != base, change
    # where the run is stored or logged does not change what it is
    for same in (["paths.runs_dir=/elsewhere"], ["tracking=none"], ["tracking.mode=online"], ["force=true"],
                 ["train.fast_path=off"], ["train.fast_path_off=[fused]"], ["eval.scorer=hf"]):
        assert fp(same) == base, same
    # every finished run of the default config keeps its folder: a change here moves them all
    assert base == "3095575fd2838661f479c9a8e4f5aa8bb23066699c6bd2ee80e60272d9308772"


def test_record_round_trip_is_atomic_and_versioned(tmp_path):
    record = RunRecord(status="finished", fingerprint="ab", run_dir=str(tmp_path), config={"seed": 0},
                       eval={"arc_easy": {"acc": {"value": 0.5, "stderr": 0.1}}})
    write_record(tmp_path, record)
    back = read_record(tmp_path)
    assert back.status == "finished" and back.eval == record.eval and back.done
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp file left behind
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert on_disk["version"] == VERSION and on_disk["eval"] == record.eval


def test_records_of_the_untyped_version_are_read_and_unknown_keys_kept(tmp_path):
    old = {"status": "finished", "fingerprint": "ab", "run_dir": str(tmp_path), "config": {}, "note": "mine"}
    (tmp_path / "record.json").write_text(json.dumps(old))
    back = read_record(tmp_path)
    assert back.version == VERSION and back.extra == {"note": "mine"}
    write_record(tmp_path, back)
    assert json.loads((tmp_path / "record.json").read_text())["note"] == "mine"  # nothing lost on rewrite


@pytest.mark.parametrize("bad, says", [
    ({"status": "finished", "version": VERSION + 1, "fingerprint": "a", "run_dir": "x", "config": {}}, "version"),
    ({"status": "done", "fingerprint": "a", "run_dir": "x", "config": {}}, "status 'done'"),
    ({"status": "finished", "config": {}}, "lacks fingerprint, run_dir"),
])
def test_records_sft_lab_cannot_read_are_named(tmp_path, bad, says):
    (tmp_path / "record.json").write_text(json.dumps(bad))
    with pytest.raises(CorruptRecord, match=says) as e:
        read_record(tmp_path)
    assert str(tmp_path / "record.json") in str(e.value)


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
