"""`python -m lib`: the shell interface (lib.cli)."""

import sys

from lib.cli import main

sys.exit(main())
