"""Entry point for ``python -m src``."""

import sys

from src.cli import main

sys.exit(main())
