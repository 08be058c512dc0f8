"""Per-pair visual reports: one self-contained HTML page per registered pair, of any submission.

``slices`` (what is shown, as plain arrays: slice positions, planes, checkerboards, grids, points
near a plane) -> ``figures`` (the matplotlib drawings) -> ``page`` (the numbers of one pair: Dice,
TRE, folding) -> ``markup`` (the HTML page, its tables and links) -> ``stage`` (the command,
``python -m evaluation.pair_reports`` / ``python -m pipeline report``: reading the files, the index).

May import: ``learn2reg``, ``evaluation`` (its metrics and Jacobian), numpy, matplotlib.
"""
