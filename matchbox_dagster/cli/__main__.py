"""``python -m matchbox_dagster.cli``: the same as the ``matchbox-dagster`` command."""

import sys

from matchbox_dagster.cli import main

sys.exit(main())
