"""`python -m eqface.cli` (used by torchrun and tests) is the `eqface` command."""

import sys

from eqface.cli import main

sys.exit(main())
