"""The demo job's fixed inputs: one configuration per demo task, each fitting its task."""

from __future__ import annotations

import argparse

from pipeline.config import load_config
from pipeline.demo.job import CONFIGS, DEMO_CONFIGS, build_parser
from pipeline.demo.tasks import SPEC_BY_KEY


def test_the_job_runs_every_demo_task_with_its_own_configuration():
    assert DEMO_CONFIGS == {"T1": "demo_t1_curious.json", "T2": "demo_t2_lung.json", "T3": "demo_t3_abdomen.json",
                            "T4": "demo_t4_hippocampus.json"}
    assert list(DEMO_CONFIGS) == list(SPEC_BY_KEY)  # every task the generator writes, in its order
    assert sorted(p.name for p in CONFIGS.glob("demo_*.json")) == sorted(DEMO_CONFIGS.values())  # none unused
    parser = argparse.ArgumentParser()
    build_parser(parser)
    assert parser.parse_args([]).tasks.split(",") == list(DEMO_CONFIGS)  # `make demo` runs them all


def test_each_demo_configuration_fits_its_task():
    cfgs = {key: load_config(CONFIGS / name) for key, name in DEMO_CONFIGS.items()}
    # T1 (MR vs ultrasound-like): the affine NGF registration alone, as the seed paper's task 1
    assert cfgs["T1"].predict.affine_only and cfgs["T1"].predict.affine == "rigid"
    for key in ("T2", "T3", "T4"):
        cfg, spec = cfgs[key], SPEC_BY_KEY[key]
        assert not cfg.predict.affine_only and cfg.predict.affine == "none", key  # a trained LapIRN, no affine step
        assert cfg.model.levels == 3 and cfg.model.start_channel == 4, key  # the tiny demo network
        assert cfg.preprocess.half_resolution, key
        assert (cfg.loss.dice > 0) == bool(spec.labels), key  # Dice supervision exactly where there are labels
        assert cfg.loss.use_mask == spec.masked, key  # the lung masks restrict the similarity
        assert all(n > 0 for n in cfg.train.steps_per_level), key
    assert cfgs["T2"].preprocess.window == (-924.0, 494.0)  # CT windows in HU
    assert cfgs["T3"].preprocess.window == (-160.0, 240.0)
    assert cfgs["T4"].preprocess.window is None  # MR
