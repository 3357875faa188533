import pytest
from conftest import ROOT, compose, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from sft_lab.config import ConfigError, to_container, validate


def all_presets():
    for group_dir in sorted((ROOT / "conf").iterdir()):
        if group_dir.is_dir() and group_dir.name not in ("hydra", "accelerate"):  # those two: tested below
            for f in sorted(group_dir.glob("*.yaml")):
                yield ("+" if group_dir.name == "experiment" else "") + f"{group_dir.name}={f.stem}"


@pytest.mark.parametrize("override", list(all_presets()))
def test_every_config_file_composes_and_validates(override):
    extra = {"data=file": ["data.path=/any/file.jsonl"]}.get(override, [])  # the one preset that needs a value
    cfg = compose([override, *extra])
    validate(cfg)


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["lora.rank=4"])
    assert "lora.rank" in str(e.value) or "rank" in str(e.value.__cause__)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["train.max_steps=many"])
    assert "max_steps" in str(e.value) + str(e.value.__cause__)


def test_typo_in_a_preset_file_fails_at_compose(tmp_path):
    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(ROOT / "conf", conf)
    (conf / "lora" / "typo.yaml").write_text("r: 8\nalpah: 16\n")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as e:
            hydra_compose(config_name="config", overrides=["lora=typo"])
    assert "alpah" in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize("override, key", [
    ("lr=-1e-4", "lr"), ("lr=0", "lr"), ("lora.r=-1", "lora.r"), ("train.max_length=0", "train.max_length"),
    pytest.param("eval.tasks=[arc_easy,no_such_task_xyz]", "no_such_task_xyz", marks=pytest.mark.slow),  # lm-eval's index ("++data.sources.alpaca.weight=0", "weight"),
    ("data.sources.alpaca.format=csv", "format"), ("eval.limit=0", "eval.limit"),
    ("train.micro_batch_size=3", "train.micro_batch_size"), ("train.micro_batch_size=0", "train.micro_batch_size"),
])
def test_cross_field_checks_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose([override]))


def test_lr_is_top_level_and_grid_names_match_the_issue():
    cfg = compose(["lr=1e-5", "data=dolly", "lora.r=16", "seed=3"])
    assert cfg.lr == 1e-5 and cfg.data.name == "dolly" and cfg.lora.r == 16 and cfg.seed == 3


def test_help_lists_groups_and_examples(tmp_path):
    out = run_cli(["--help"], cwd=tmp_path)
    assert out.returncode == 0
    for text in ("model: smollm2_135m, tiny", "data: all_local, alpaca, alpaca_dolly", "template:", "-m data=alpaca,dolly"):
        assert text in out.stdout


def test_bad_override_exits_nonzero_naming_the_key(tmp_path):
    out = run_cli(["train.max_lenght=128", "tracking=none"], cwd=tmp_path)
    assert out.returncode != 0
    assert "max_lenght" in out.stderr
    out = run_cli(["lr=-1", "tracking=none", f"paths.runs_dir={tmp_path}/runs"], cwd=tmp_path)
    assert out.returncode == 2 and "lr must be > 0" in out.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/record.json"))


def test_a_key_added_with_plus_is_refused_not_ignored():
    with pytest.raises(ConfigError) as e:
        validate(compose(["+train.num_train_epochs=3"]))
    assert "train.num_train_epochs" in str(e.value) and "max_steps" in str(e.value)
    validate(compose(["+data.sources.mine={path:/x.jsonl,weight:0.5}", "data=alpaca_dolly"]))  # a source may be added


def test_defaults_live_only_in_the_schemas():
    """conf/ picks presets; the default of every key is written once, in sft_lab/config.py."""
    import yaml

    from sft_lab.config import CONF_DIR

    for name in ("train/default.yaml", "eval/default.yaml"):
        assert yaml.safe_load((CONF_DIR / name).read_text()) is None, f"conf/{name} restates schema defaults"
    top = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    assert set(top) == {"defaults", "hydra"}, f"conf/config.yaml sets {set(top) - {'defaults', 'hydra'}}"
    cfg = compose([])
    assert (cfg.lr, cfg.seed, cfg.train.max_steps, cfg.eval.limit, cfg.paths.runs_dir) == (2e-4, 0, 50, 200, "runs")


@pytest.mark.parametrize("override, says", [
    ("model.load_in_4bit=true", "needs a CUDA GPU"),
    ("model.attn_implementation=flash_attention_2", "needs the flash-attn package"),
])
def test_memory_options_this_machine_cannot_honour_are_named(override, says):
    import torch

    if "4bit" in override and torch.cuda.is_available():
        pytest.skip("a CUDA machine can load 4-bit weights")
    with pytest.raises(ConfigError, match=says):
        validate(compose([override]))


def test_options_added_later_keep_existing_runs_in_their_folders():
    from sft_lab.record import fingerprint

    base = fingerprint(to_container(compose(["lora.dropout=0.05"])))  # lora.dropout's default until 2026-11-26
    assert base.startswith("c1be0806222aba63")  # the default config's folder before these keys existed
    for changed in ("train.gradient_checkpointing=true", "model.attn_implementation=eager", "train.micro_batch_size=1"):
        assert fingerprint(to_container(compose(["lora.dropout=0.05", changed]))) != base, changed
    assert fingerprint(to_container(compose([]))) != base  # the new default is a new run


def test_launcher_presets_hold_only_keys_their_launchers_take():
    import dataclasses

    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    from omegaconf import OmegaConf

    for name, schema in (("slurm", SlurmQueueConf), ("local", LocalQueueConf)):
        preset = OmegaConf.load(ROOT / "conf" / "hydra" / "launcher" / f"{name}.yaml")
        known = {f.name for f in dataclasses.fields(schema)}
        assert set(preset) - {"defaults"} <= known, (name, set(preset) - known)


def test_accelerate_configs_load_in_accelerate():
    from accelerate.commands.config.config_args import ClusterConfig

    for path in sorted((ROOT / "conf" / "accelerate").glob("*.yaml")):
        config = ClusterConfig.from_yaml_file(path)
        assert config.num_processes >= 1, path


@pytest.mark.slow  # installs and launches every console script
def test_console_scripts_run_from_anywhere_and_complete_on_tab(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user's shell has it
    for script in ("sft-lab-run", "sft-lab-sweep", "sft-lab-table", "sft-lab-export"):
        out = subprocess.run([str(bin_dir / script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert out.returncode == 0, (script, out.stderr[-2000:])
    # Hydra's bash completion, as `eval "$(sft-lab-run -sc install=bash)"` wires it into the shell
    for line, want in (("sft-lab-run dat", "data="), ("sft-lab-run data=al", "data=alpaca_dolly"),
                       ("sft-lab-run train.pac", "train.packing=")):
        out = subprocess.run([str(bin_dir / "sft-lab-run"), "-sc", "query=bash"], cwd=tmp_path,
                             env={**env, "COMP_LINE": line}, capture_output=True, text=True)
        assert want in out.stdout.split(), (line, out.stdout, out.stderr[-1000:])


def test_fsdp_refuses_what_it_cannot_run_and_names_the_way_out(monkeypatch):
    import torch

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch` with an FSDP config sets it
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs CUDA GPUs.*torchrun"):  # not a silent unsharded run
        validate(compose(["model=tiny"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate(compose(["model=tiny"]))  # FSDP2 with LoRA: fine
    with pytest.raises(ConfigError, match="model.load_in_4bit=true under fsdp2"):
        validate(compose(["model.load_in_4bit=true"]))
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="lora.r=8 under FSDP1.*fsdp_version: 2"):
        validate(compose(["model=tiny", "lora=r8"]))
    validate(compose(["model=tiny", "lora=full"]))  # FSDP1 shards full fine-tuning
    monkeypatch.setenv("FSDP_USE_ORIG_PARAMS", "true")
    validate(compose(["model=tiny", "lora=r8"]))


def test_deepspeed_is_refused_on_cpu_and_with_4bit_weights(monkeypatch):
    import torch

    from sft_lab.distributed import sharding

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # as `accelerate launch` with a DeepSpeed config sets it
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert sharding() == "deepspeed-zero3"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="deepspeed-zero3 .* needs CUDA GPUs"):
        validate(compose(["model=tiny"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate(compose(["model=tiny", "lora=r8"]))
    with pytest.raises(ConfigError, match="load_in_4bit=true under deepspeed-zero3"):
        validate(compose(["model.load_in_4bit=true"]))


def test_the_fsdp_config_is_fsdp2_with_full_weights_for_rank_0():
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(ROOT / "conf" / "accelerate" / "fsdp.yaml")
    assert config.distributed_type == "FSDP"
    assert config.fsdp_config["fsdp_version"] == 2  # FSDP1 cannot mix LoRA's trainable and frozen weights
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.parametrize("override, key, choices", [
    ("model.attn_implementation=fast", "model.attn_implementation", "sdpa, eager, flash_attention_2"),
    ("train.optimizer=lion", "train.optimizer", "adamw_torch, adamw_8bit, sgd, adafactor"),
    ("train.schedule=cosin", "train.schedule", "linear, cosine, constant, constant_with_warmup"),
    ("model.dtype=fp8", "model.dtype", "auto, float32, bfloat16, float16"),
    ("eval.heldout=every", "eval.heldout", "own, all"),
    ("train.fast_path=fast", "train.fast_path", "auto, off"),
    ("tracking.mode=live", "tracking.mode", "offline, online"),
])
def test_a_choice_outside_its_list_is_refused_when_the_config_composes(override, key, choices):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        compose([override])
    said = str(e.value) + str(e.value.__cause__)
    assert f"full_key: {key}" in said and f"expected one of [{choices}]" in said, said


def test_gpu_kernels_are_refused_where_they_cannot_run_and_leave_the_fingerprint_alone():
    import torch

    from sft_lab.config import ConfigError, to_container, validate
    from sft_lab.record import fingerprint

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.liger=true needs a CUDA GPU"):
            validate(compose(["train.liger=true"]))
        with pytest.raises(ConfigError, match="set train.fast_path=off with it"):
            validate(compose(["train.torch_compile=true"]))
    validate(compose(["train.torch_compile=true", "train.fast_path=off"]))
    plain = fingerprint(to_container(compose([])))
    assert fingerprint(to_container(compose(["train.torch_compile=true", "train.liger=true"]))) == plain
