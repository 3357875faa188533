"""A wheel is the whole tool: installed in a fresh virtual environment, outside the checkout, it trains,
evaluates and makes a table with the configs it carries (sft_lab/conf)."""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.e2e


def test_a_wheel_installed_outside_the_checkout_runs_and_tabulates(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = dist.glob("sft_lab-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies: this environment's, without its editable sft_lab (a .pth in a .pth'd folder is not read)
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import sft_lab; print(sft_lab.__file__, sft_lab.CONF_DIR)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(purelib) for p in where), where  # the wheel's package and configs, not the checkout's
    run = subprocess.run([venv / "bin" / "sft-lab-run", "model=tiny", "tracking=none", "train.max_steps=2",
                          "data.examples=16", "train.max_length=128", "eval.tasks=[heldout]", "eval.limit=4"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [record] = (work / "runs").glob("*/record.json")
    assert json.loads(record.read_text())["status"] == "finished"
    table = subprocess.run([venv / "bin" / "sft-lab-table", "runs", "--rows", "data"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-3000:]
    assert "heldout/bits_per_byte" in table.stdout or "heldout/loss" in table.stdout, table.stdout
