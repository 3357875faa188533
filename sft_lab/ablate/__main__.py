import sys

from sft_lab.ablate.cli import main

sys.exit(main())
