"""Scoring: the official Learn2Reg metrics (and clearly named corrected ones), the evaluator and
the zero-field row, plus what is built on scores.

* ``metrics``, ``surface``, ``spline``  DSC, HD95 (DeepMind's surface method), TRE (the official
                   cubic B-spline sampling at points, in numpy: scipy's exact weights), centroid TRE
* ``jacobian``     SDlogJ and folding, and LUMIR's non-diffeomorphic volume (NDV, %)
* ``evaluate``     the evaluator (``python -m evaluation.evaluate``, the organisers' flags and schema),
                   one rule set per organiser (``learn2reg.rules``); ``case`` scores one pair, ``pool``
                   runs the pairs in worker processes (a worker that dies is named by its pair);
                   ``aggregate`` merges configurations and aggregates as each organiser does, and
                   prints the official and corrected aggregates, labelled as such
* ``initial``      the zero field evaluated like a submission (``python -m evaluation.initial``)
* ``leaderboard/`` several evaluated methods -> tables, rank scores, Markdown/CSV/HTML
                   (``python -m evaluation.leaderboard``)
* ``pair_reports/`` one self-contained HTML page per registered pair, from files only
                   (``python -m evaluation.pair_reports``, ``python -m pipeline report``)

May import: ``learn2reg`` (the formats), numpy, scipy, nibabel, pandas, matplotlib; never torch or
``pipeline``: it runs in a slim container and stays independent of the code it judges.
"""
