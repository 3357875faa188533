#!/usr/bin/env python
"""A study's outputs from its runs folder: table.md, benchmarks.svg, transfer.svg, forgetting.svg and
report.html; see `python analysis/study.py --help`.

    python analysis/study.py runs/study --out docs/study
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from sft_lab.analysis.report import study_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(study_main())
