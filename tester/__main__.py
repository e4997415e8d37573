"""Entry point: `python -m tester SCENARIO -c CONFIG [options]` (see tester/cli.py)."""

import sys

from tester.cli import main

sys.exit(main())
