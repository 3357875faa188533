#!/usr/bin/env python
"""How many seeds and eval items does it take to detect an effect? Estimated from pilot runs. Installed as `sft-lab-plan`; see `sft-lab-plan --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from sft_lab.analysis.plan import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
