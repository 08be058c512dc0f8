"""The hand-in files and the check run's mounts, without an engine."""

from __future__ import annotations

import os

from learn2reg.io import write_json
from pipeline.container import contracts, handin

MEASURED = {
    "contract": "lumir",
    "image": {"tag": "reg_model:latest", "file": "reg_model.tar.gz", "file_bytes": 5e8, "size_bytes": 1.7e9},
    "run": {"source": "imported (runs/x, best.pt)"},
    "organiser_commands": {"load": "docker load --input reg_model.tar.gz", "run": handin.command_text(contracts.LUMIR, "reg_model:latest")},
    "hand_in": contracts.LUMIR.handin,
    "check": {"task": "data/LUMIR", "field_shape": [3, 160, 224, 192]},
    "measured": {"pairs": 38, "mean_s": 9.87, "median_s": 9.52, "max_s": 12.1, "startup_s": 7.6, "peak_rss_gib": 3.24, "cpus": 8, "device": "cpu"},
}


def test_lumirs_readme_states_cpus_ram_and_time_per_subject(tmp_path):
    handin.write_lumir_readme(tmp_path / "README.txt", MEASURED)
    text = (tmp_path / "README.txt").read_text()
    assert "CPUs: 8 " in text and "RAM: 3.2 GiB peak measured" in text and "--memory 16g" in text
    assert "Time per subject (pair): 9.9 s mean, 9.5 s median, 12.1 s max over 38 pairs on cpu, plus 8 s start-up once" in text
    assert "(measured on data/LUMIR, fields 160x224x192;" in text
    assert "\n  docker load --input reg_model.tar.gz\n  docker run --rm --ipc=host --memory 16g --mount" in text


def test_an_unmeasured_readme_says_how_to_measure(tmp_path):
    handin.write_lumir_readme(tmp_path / "README.txt", {**MEASURED, "measured": None})
    assert "not measured: `python -m pipeline container ... --data TASK`" in (tmp_path / "README.txt").read_text()


def test_the_command_lines_handed_in_name_the_host_paths_to_fill_in():
    assert handin.command_text(contracts.LUMIR25, "img") == (
        "docker run --rm --ipc=host --memory 256g --gpus device=0 --user $(id -u):$(id -g) --network=none "
        "--mount type=bind,source=DATASET_JSON,target=/app/LUMIR25_dataset.json --mount type=bind,source=INPUT_DIR,target=/app/input "
        "--mount type=bind,source=OUTPUT_DIR,target=/app/output img"
    )
    assert handin.command_text(contracts.ONCOREG, "img", train=True).endswith("--entrypoint ./train.sh -v DATA_DIR:/oncoreg/data -v MODEL_DIR:/oncoreg/model/ img TASK")
    lines = handin.next_steps(MEASURED)
    assert lines[0] == "image: reg_model.tar.gz (500 MB; reg_model:latest, 1.70 GB loaded)"
    assert lines[-1].startswith("hand in: LUMIR_<user>_TestPhase.zip")


def test_check_run_mounts_per_contract(tmp_path):
    task = tmp_path / "T"
    task.mkdir()
    write_json(task / "ThoraxCBCT_dataset.json", {"name": "ThoraxCBCT"})
    lumir = handin.mount_values(contracts.LUMIR, task, None, tmp_path / "a", tmp_path / "a.check")
    assert lumir["json"] == str(task / "ThoraxCBCT_dataset.json") and lumir["input"] == str(task)
    assert lumir["output"] == str(tmp_path / "a.check") and os.path.isdir(lumir["output"])
    onco = handin.mount_values(contracts.ONCOREG, task, None, tmp_path / "b", tmp_path / "b.check")
    assert onco["task"] == "ThoraxCBCT" and onco["mode"] == "Val" and os.path.isdir(onco["model"]) and onco["results"] == str(tmp_path / "b.check")
    assert handin.mount_values(contracts.L2R, task, None, tmp_path / "c", tmp_path / "c.check")["json_name"] == "ThoraxCBCT_dataset.json"
