"""Run the ``brewnet`` command with ``python -m brewnet``."""

import sys

from brewnet.cli import main

sys.exit(main())
