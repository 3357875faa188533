#!/usr/bin/env python
"""Main effects: each factor's levels averaged over the other factors, with 95% CIs. Installed as `sft-lab-effects`; see `sft-lab-effects --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from sft_lab.analysis.effects import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
