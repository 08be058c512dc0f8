"""The leaderboard: evaluator results of several methods -> the seed paper's Table 1 plus rank scores.

The chain, one module a step: ``results`` (read and check result JSONs) -> ``board`` (the numbers a
board shows: table, statistics, gaps, ranks; ``ranking`` holds Learn2Reg's rank-score scheme) ->
``tables`` (text cells) -> ``render`` (Markdown, HTML, box plots) -> ``stage`` (the command,
``python -m evaluation.leaderboard``, writing the files).

May import: ``learn2reg``, ``evaluation`` (its ``pair_reports`` for links), numpy, scipy, pandas, matplotlib.
"""
