import sys

from lionk.cli import main

sys.exit(main())
