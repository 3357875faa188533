#!/usr/bin/env python
"""Ablation tables from finished runs; see `python analysis/ablation_table.py --help`.

    python analysis/ablation_table.py runs/ --rows data --ref data=alpaca
    python analysis/ablation_table.py runs/ --rows lr,lora.r --plot heatmap --out lr_rank.png
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from sft_lab.analysis.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
