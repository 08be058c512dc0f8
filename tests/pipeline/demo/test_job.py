"""The demo job's fixed inputs: its task configurations are found and load."""

from __future__ import annotations

from pipeline.config import load_config
from pipeline.demo.job import CONFIGS, DEMO_CONFIGS


def test_every_demo_task_has_a_loadable_configuration():
    assert CONFIGS.is_dir(), CONFIGS
    for task, name in DEMO_CONFIGS.items():
        cfg = load_config(CONFIGS / name)
        assert cfg.model.levels >= 1, task
