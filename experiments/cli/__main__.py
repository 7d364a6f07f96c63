"""`python -m featbank.experiments.cli` (used by torchrun)."""

import sys

from featbank.experiments.cli import main

sys.exit(main())
