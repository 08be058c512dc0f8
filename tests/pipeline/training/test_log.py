"""Training curves (pipeline.training.log): from a synthetic log.csv, the smoothed series, the
level boundaries and the best step are exactly the values derived by hand; curves.png is written."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.training.log import COLUMNS, TrainingLog, best_checkpoint_step, curve_data

# (level, loss) per training step, global steps 1..7; validation after steps 2, 4, 6, 7
TRAIN = [(1, 4.0), (1, 2.0), (1, 6.0), (2, 1.0), (2, 3.0), (3, 8.0), (3, 2.0)]
VAL = {2: 0.5, 4: 0.6, 6: 0.7, 7: 0.7}  # step -> val_dice (= val_score); level 3 ties at 0.7


def synthetic_log(tmp_path, scores=VAL) -> pd.DataFrame:
    rows = [{"global_step": 0, "level": 0, "step": 0, "kind": "initial", "val_dice": 0.25, "val_score": 0.25}]
    for g, (level, loss) in enumerate(TRAIN, start=1):
        rows.append({"global_step": g, "level": level, "step": g, "kind": "train", "loss": loss, "similarity": -loss,
                     "smooth": 2 * loss, "dice": 0.0, "antifold": float("nan") if g == 5 else 1.0})
        if g in scores:
            rows.append({"global_step": g, "level": level, "step": g, "kind": "val", "val_dice": scores[g], "val_score": scores[g]})
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return pd.read_csv(path)


def test_smoothed_series_boundaries_and_best_step_are_exact(tmp_path):
    curves = curve_data(synthetic_log(tmp_path), window=2, levels=3)
    np.testing.assert_array_equal(curves.steps, [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(curves.raw["loss"], [4, 2, 6, 1, 3, 8, 2])
    # trailing mean of 2 within each level: a level starts afresh
    np.testing.assert_array_equal(curves.smoothed["loss"], [4, 3, 4, 1, 2, 8, 5])
    np.testing.assert_array_equal(curves.smoothed["similarity"], [-4, -3, -4, -1, -2, -8, -5])
    np.testing.assert_array_equal(curves.smoothed["smooth"], [8, 6, 8, 2, 4, 16, 10])
    np.testing.assert_array_equal(curves.smoothed["antifold"], [1, 1, 1, 1, 1, 1, 1])  # the NaN at step 5 is skipped
    assert math.isnan(curves.raw["antifold"][4])
    assert curves.boundaries == (3.5, 5.5)  # between steps 3|4 (level 1|2) and 5|6 (level 2|3)
    assert curves.best_step == 6  # level 3's first highest score (the trainer keeps a strictly better one)
    assert curves.baseline == {"val_dice": 0.25}
    steps, dice = curves.validation["val_dice"]
    np.testing.assert_array_equal(steps, [2, 4, 6, 7])
    np.testing.assert_array_equal(dice, [0.5, 0.6, 0.7, 0.7])
    wide = curve_data(synthetic_log(tmp_path), window=3)
    np.testing.assert_array_equal(wide.smoothed["loss"], [4, 3, 4, 1, 2, 8, 5])  # window 3 = whole level here
    assert curve_data(synthetic_log(tmp_path), window=1).smoothed["loss"].tolist() == [4, 2, 6, 1, 3, 8, 2]


def test_best_step_rules(tmp_path):
    frame = synthetic_log(tmp_path)
    assert best_checkpoint_step(frame, levels=3) == 6
    assert best_checkpoint_step(frame, levels=4) is None  # the last level has no validation yet
    assert best_checkpoint_step(frame[frame["global_step"] <= 4]) == 4  # levels unknown: the highest in the log
    no_score = synthetic_log(tmp_path, {2: 0.5, 6: float("nan"), 7: float("nan")})
    assert best_checkpoint_step(no_score, levels=3) == 7  # no finite score: best = last
    assert curve_data(frame, levels=3, best_step=7).best_step == 7  # the trainer's word wins
    with pytest.raises(ValueError, match="window"):
        curve_data(frame, window=0)


def test_the_log_writes_csv_and_png_and_the_default_window(tmp_path):
    frame = synthetic_log(tmp_path)
    run = tmp_path / "my-run"
    run.mkdir()
    log = TrainingLog(run, levels=3, best_step=6)
    log.rows = frame.to_dict("records")
    log.write()
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(pd.read_csv(run / "log.csv"), frame)
    assert curve_data(frame).window == 1 and curve_data(pd.concat([frame] * 10)).window == 70 // 25
    empty = curve_data(pd.DataFrame(columns=COLUMNS))
    assert empty.steps.size == 0 and empty.boundaries == () and empty.best_step is None
    TrainingLog(tmp_path / "my-run").plot(pd.DataFrame(columns=COLUMNS))  # an empty log still plots
