"""`python -m sft_lab.evaluate RUNS_DIR 'eval.tasks=[...]'`: add tasks to finished runs (sft_lab/reevaluate.py)."""

import sys

from sft_lab.reevaluate import main

sys.exit(main())
