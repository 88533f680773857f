"""``python -m lionk``: the ``lionk`` command (see lionk.cli)."""

import sys

from lionk.cli import main

sys.exit(main())
