"""`python -m modelrail` is the same as the `modelrail` command."""

import sys

from modelrail.cli import main

sys.exit(main())
