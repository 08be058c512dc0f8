"""``python -m evaluation.leaderboard``: see :mod:`evaluation.leaderboard.stage`."""

import sys

from evaluation.leaderboard.stage import main

sys.exit(main())
