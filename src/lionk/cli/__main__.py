"""``python -m lionk.cli``: the ``lionk`` command."""

import sys

from lionk.cli import main

sys.exit(main())
