"""``python -m evaluation.pair_reports``: see :mod:`evaluation.pair_reports.stage`."""

import sys

from evaluation.pair_reports.stage import main

sys.exit(main())
