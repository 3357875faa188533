"""sft-lab: supervised fine-tuning ablations, from one command to a table."""

__version__ = "0.1.0"

from pathlib import Path as _Path

_HERE = _Path(__file__).resolve().parent
# The Hydra configs: inside the package in an installed wheel, beside it in a checkout (conf/).
CONF_DIR = next((d for d in (_HERE / "conf", _HERE.parent / "conf") if (d / "config.yaml").is_file()), _HERE / "conf")
