"""``python -m benchmarks``: run the suite, write benchmarks/RESULTS.md and results.json."""

import sys

from .runner import main

sys.exit(main())
