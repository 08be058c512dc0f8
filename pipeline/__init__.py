"""Learn2Reg submission pipeline around LapIRN.

Stages (each an importable function with a thin CLI, talking only through files):
demo-data, validate, preprocess, align, train, predict; ``evaluation`` scores the result.
Run ``python -m pipeline --help``.
"""
