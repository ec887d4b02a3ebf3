"""``python -m eqface.service``: run the aggregation server (see ``--help``)."""

from eqface.service.cli import main

raise SystemExit(main())
