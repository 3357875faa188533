import sys

from sft_lab.sweep.cli import main

sys.exit(main())
