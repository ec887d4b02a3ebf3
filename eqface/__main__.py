"""`python -m eqface` is the `eqface` command."""

import sys

from eqface.cli import main

sys.exit(main())
