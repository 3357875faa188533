#!/usr/bin/env python
"""One self-contained HTML report from finished runs: styled tables, embedded figures, the eval protocol,
the legend and the run list; see `python analysis/report.py --help`.

    python analysis/report.py runs/study --out report.html
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from sft_lab.analysis.report import report_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(report_main())
