"""`python -m geodemo ...`: see geodemo.cli."""

import sys

from geodemo.cli import main

sys.exit(main())
