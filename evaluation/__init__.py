"""Learn2Reg evaluation: the official metrics (and corrected ones), submission checks,
leaderboard. Depends on numpy, scipy, nibabel and pandas only: no torch, so it runs in a
slim container and stays independent of the code it judges. It also owns the challenge's
formats (``contract``, ``dataset``, ``io``), which the pipeline imports, and draws per-pair visual
reports (``visual``, ``pair_report``, ``reports``; matplotlib) of any submission.
"""
