"""Run configuration: every field's type and range checked when a file is loaded, every problem
of a file listed at once (file, dotted key, value, what is allowed), refused configurations
leave nothing behind (``train`` and ``predict`` exit 1 with the message, no traceback)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from learn2reg.io import DataError
from pipeline.cli import main
from pipeline.config import ModelConfig, PreprocessConfig, RunConfig, TrainConfig, config_from_dict, load_config
from tests.paths import REPO
from tests.pipeline.training.test_train import make_blob_task


def write(tmp_path: Path, raw: object, name: str = "bad.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


# (the file's content, the dotted key and the value as the message must show them)
BAD = {
    # the five examples of the issue
    "steps not a list": ({"train": {"steps_per_level": 5}}, "train.steps_per_level", "5"),
    "steps item a string": ({"train": {"steps_per_level": [2, "four", 10]}}, "train.steps_per_level[1]", '"four"'),
    "start_channel fractional": ({"model": {"start_channel": 4.5}}, "model.start_channel", "4.5"),
    "window a string": ({"preprocess": {"window": "soft"}}, "preprocess.window", '"soft"'),
    "levels 0": ({"model": {"levels": 0}}, "model.levels", "0"),
    # wrong type
    "int given as 4.0": ({"train": {"cpu_threads": 4.0}}, "train.cpu_threads", "4.0"),
    "bool for int": ({"train": {"seed": True}}, "train.seed", "true"),
    "bool for float": ({"loss": {"smooth": False}}, "loss.smooth", "false"),
    "string for float": ({"train": {"lr": "1e-3"}}, "train.lr", '"1e-3"'),
    "number for bool": ({"loss": {"use_mask": 1}}, "loss.use_mask", "1"),
    "string for bool": ({"preprocess": {"half_resolution": "yes"}}, "preprocess.half_resolution", '"yes"'),
    "null for int": ({"model": {"ss_steps": None}}, "model.ss_steps", "null"),
    "NaN": ({"train": {"lr": float("nan")}}, "train.lr", "NaN"),
    "section not an object": ({"train": 5}, "train", "5"),
    # out of range
    "levels above 5": ({"model": {"levels": 6}, "train": {"steps_per_level": [1] * 6}}, "model.levels", "6"),
    "negative steps": ({"train": {"steps_per_level": [2, -1, 10]}}, "train.steps_per_level[1]", "-1"),
    "percentile 0": ({"preprocess": {"percentile": 0}}, "preprocess.percentile", "0"),
    "percentile above 100": ({"preprocess": {"percentile": 100.5}}, "preprocess.percentile", "100.5"),
    "lr 0": ({"train": {"lr": 0}}, "train.lr", "0"),
    "negative smooth": ({"loss": {"smooth": -1.0}}, "loss.smooth", "-1.0"),
    "eps 0": ({"loss": {"eps": 0.0}}, "loss.eps", "0.0"),
    "range_flow 0": ({"model": {"range_flow": 0}}, "model.range_flow", "0"),
    "probability above 1": ({"train": {"augment": {"prob": 1.5}}}, "train.augment.prob", "1.5"),
    "scaling 1": ({"train": {"augment": {"scaling": 1}}}, "train.augment.scaling", "1"),
    "val_every 0": ({"train": {"val_every": 0}}, "train.val_every", "0"),
    "negative cpu_threads": ({"train": {"cpu_threads": -1}}, "train.cpu_threads", "-1"),
    "negative instance_opt_steps": ({"predict": {"instance_opt_steps": -3}}, "predict.instance_opt_steps", "-3"),
    "negative search radius": ({"predict": {"affine_search_mm": -10}}, "predict.affine_search_mm", "-10"),
    "input_scale 0": ({"predict": {"input_scale": 0}}, "predict.input_scale", "0"),
    "negative target_spacing": ({"predict": {"target_spacing": -1.5}}, "predict.target_spacing", "-1.5"),
    "target_spacing a list": ({"predict": {"target_spacing": [1, 1, 2]}}, "predict.target_spacing", "[1, 1, 2]"),
    # bad choice
    "warp_padding": ({"model": {"warp_padding": "reflection"}}, "model.warp_padding", '"reflection"'),
    "train amp": ({"train": {"amp": "fp32"}}, "train.amp", '"fp32"'),
    "predict amp": ({"predict": {"amp": "bfloat16"}}, "predict.amp", '"bfloat16"'),
    "predict affine": ({"predict": {"affine": "similarity"}}, "predict.affine", '"similarity"'),
    "lr_schedule": ({"train": {"lr_schedule": "step"}}, "train.lr_schedule", '"step"'),
    # window: wrong length, not increasing, bad item
    "window of 3": ({"preprocess": {"window": [1, 2, 3]}}, "preprocess.window", "[1, 2, 3]"),
    "window lo = hi": ({"preprocess": {"window": [5, 5]}}, "preprocess.window", "[5, 5]"),
    "window lo > hi": ({"preprocess": {"window": [800, -500]}}, "preprocess.window", "[800, -500]"),
    "window item a string": ({"preprocess": {"window": [-500, "800"]}}, "preprocess.window", '[-500, "800"]'),
    # hu_offset: "auto" or a number
    "hu_offset another word": ({"preprocess": {"hu_offset": "detect"}}, "preprocess.hu_offset", '"detect"'),
    "hu_offset out of range": ({"preprocess": {"hu_offset": 40000}}, "preprocess.hu_offset", "40000"),
    "hu_offset null": ({"preprocess": {"hu_offset": None}}, "preprocess.hu_offset", "null"),
    "hu_offset a bool": ({"preprocess": {"hu_offset": True}}, "preprocess.hu_offset", "true"),
    # unknown keys
    "unknown key": ({"model": {"channels": 8}}, "model.channels", "unknown key"),
    "unknown section": ({"optimiser": {}}, "optimiser", "unknown key"),
    # across fields
    "fewer steps than levels": ({"train": {"steps_per_level": [30, 30]}}, "train.steps_per_level", "[30, 30]"),
    "more levels than steps": ({"model": {"levels": 4}}, "train.steps_per_level", "[30000, 30000, 60000]"),
    "no step at all": ({"train": {"steps_per_level": [0, 0, 0]}}, "train.steps_per_level", "[0, 0, 0]"),
    "warm-up as long as a level": (
        {"train": {"steps_per_level": [10, 0, 40], "lr_schedule": "cosine", "warmup_steps": 10}}, "train.warmup_steps", "10"),
    "warm-up with a constant rate": ({"train": {"warmup_steps": 100}}, "train.warmup_steps", "100"),
    "two grid scales": ({"predict": {"input_scale": 2, "target_spacing": 1}}, "predict.target_spacing", "1"),
}


@pytest.mark.parametrize("raw, key, shown", BAD.values(), ids=BAD.keys())
def test_a_bad_value_is_refused_with_the_file_the_key_the_value_and_what_is_allowed(tmp_path, raw, key, shown):
    path = write(tmp_path, raw)
    with pytest.raises(DataError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 1, lines  # one problem, reported once (no follow-up errors)
    assert lines[0].startswith(f"{path}: {key}: {shown}"), lines[0]
    assert "(allowed: " in lines[0]


@pytest.mark.parametrize("raw, allowed", [
    ({"train": {"steps_per_level": 5}}, "a list of integers >= 0"),
    ({"model": {"levels": 0}}, "an integer >= 1 and <= 5"),
    ({"model": {"warp_padding": "zero"}}, 'one of "border", "zeros"'),
    ({"preprocess": {"window": "soft"}}, "null or a list of 2 numbers, strictly increasing"),
    ({"preprocess": {"percentile": -1}}, "a number > 0 and <= 100"),
    ({"predict": {"target_spacing": "1mm"}}, "null or a number > 0"),
    ({"predict": {"input_scale": 2.0, "target_spacing": 0.5}}, "null when predict.input_scale is not 1 (predict.input_scale = 2.0)"),
    ({"preprocess": {"hu_offset": "1024"}}, '"auto" or a number >= -32768 and <= 32768'),
    ({"train": {"augment": {"prob": -0.1}}}, "a number >= 0 and <= 1"),
    ({"model": {"levels": 2}}, "a list of 2 entries, one per model level (model.levels = 2)"),
    ({"model": {"foo": 1}}, "allowed: levels, start_channel, diffeomorphic, range_flow, ss_steps, align_corners, warp_padding"),
])
def test_the_message_says_what_is_allowed(raw, allowed):
    with pytest.raises(DataError, match=r"\(allowed: ") as err:
        config_from_dict(raw, "cfg.json")
    assert allowed in str(err.value)


def test_every_problem_of_a_file_is_listed_at_once_one_per_line(tmp_path):
    raw = {
        "_comment": "notes are ignored",
        "preprocess": {"window": "soft", "percentile": 0},
        "model": {"levels": 0, "start_channel": 4.5, "warp_padding": "reflect", "width": 3},
        "train": {"steps_per_level": [2, "four", 10], "lr": -1, "amp": True, "augment": {"prob": 2}},
        "predict": 5,
        "extra": {},
    }
    path = write(tmp_path, raw)
    with pytest.raises(DataError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    keys = ["preprocess.window", "preprocess.percentile", "model.levels", "model.start_channel", "model.warp_padding",
            "model.width", "train.steps_per_level[1]", "train.lr", "train.amp", "train.augment.prob", "predict", "extra"]
    assert [line.split(": ")[1] for line in lines] == keys
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_every_field_is_checked():
    """A value no field accepts, in every field of every section: one problem per field."""
    sections = {name: dataclasses.fields(section) for name, section in vars(RunConfig()).items()}
    raw = {name: {f.name: [{}] for f in section} for name, section in sections.items()}
    with pytest.raises(DataError) as err:
        config_from_dict(raw, "all.json")
    keys = [f"{name}.{f.name}" for name, section in sections.items() for f in section]
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1].split("[")[0] for line in lines] == keys
    assert all("(allowed: " in line for line in lines)
    assert RunConfig() == config_from_dict({})  # the defaults pass the same checks


def test_a_file_that_is_not_an_object_is_refused(tmp_path):
    path = write(tmp_path, [1, 2])
    with pytest.raises(DataError, match=r"bad\.json: \[1, 2\] \(allowed: an object with the keys preprocess, model"):
        load_config(path)


@pytest.mark.parametrize("raw", [
    {"loss": {"smooth": 1, "dice": 3}, "train": {"lr": 1}, "predict": {"affine_search_mm": 10}},  # ints for floats
    {"preprocess": {"window": None}},
    {"preprocess": {"window": [-1000, 1000.5], "percentile": 100}},
    {"preprocess": {"window": [-924, 494], "hu_offset": 1024}},
    {"preprocess": {"window": [-924, 494], "hu_offset": "auto"}},
    {"preprocess": {"hu_offset": -1024.5}},
    {"train": {"steps_per_level": [2, 0, 0], "augment": {"prob": 0, "scaling": 0, "_note": "off"}}},  # a level skipped
    {"train": {"steps_per_level": [4, 0, 6], "lr_schedule": "cosine", "warmup_steps": 3}},
    {"model": {"levels": 1}, "train": {"steps_per_level": [5]}},
    {"model": {"levels": 5, "warp_padding": "zeros"}, "train": {"steps_per_level": [1, 1, 1, 1, 1], "amp": "none"}},
    {"train": {"augment": {"prob": 1.0}, "seed": 4294967295}, "predict": {"affine": "affine", "amp": "fp16"}},
    {"predict": {"input_scale": 2}, "preprocess": {"half_resolution": True}},
    {"predict": {"input_scale": 1, "target_spacing": 1.5}},
])
def test_good_values_load(raw):
    cfg = config_from_dict(raw)
    assert isinstance(cfg.train.steps_per_level, tuple)
    assert config_from_dict(cfg.to_dict()) == cfg  # the resolved config of a run folder loads again


def test_lists_become_tuples_and_numbers_are_kept_as_written():
    cfg = config_from_dict({"preprocess": {"window": [-500, 800]}, "train": {"steps_per_level": [1, 2, 3]}})
    assert cfg.preprocess.window == (-500, 800) and cfg.train.steps_per_level == (1, 2, 3)
    assert isinstance(cfg.preprocess.window[0], int)  # digests of existing caches do not change


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert len(cfg.train.steps_per_level) == cfg.model.levels
    assert config_from_dict(cfg.to_dict()) == cfg


def test_sections_built_in_code_are_checked_too():
    with pytest.raises(DataError, match=r"^TrainConfig\.cpu_threads: -1 \(allowed: an integer >= 0\)$"):
        TrainConfig(cpu_threads=-1)
    with pytest.raises(DataError, match=r"PreprocessConfig\.window: \[2, 1\]"):
        PreprocessConfig(window=(2, 1))
    with pytest.raises(DataError, match=r"train\.steps_per_level: \[30000, 30000, 60000\] \(allowed: a list of 2 entries"):
        RunConfig(model=ModelConfig(levels=2))
    assert RunConfig(model=ModelConfig(levels=2), train=TrainConfig(steps_per_level=(1, 1))).model.levels == 2


# ---------------------------------------------------------------------- the stages refuse before writing

BAD_FILE = {"model": {"start_channel": 4.5}, "train": {"steps_per_level": [2, "four", 10]}}


def _refused(capsys, argv: list[str], path: Path) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: model.start_channel: 4.5 (allowed: an integer >= 1)\n"), err
    assert f'{path}: train.steps_per_level[1]: "four"' in err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return make_blob_task(tmp_path_factory.mktemp("task"))


def test_train_refuses_a_bad_config_before_creating_the_run_folder(tmp_path, capsys, task):
    path = write(tmp_path, BAD_FILE)
    run = tmp_path / "run"
    _refused(capsys, ["train", "--data", str(task), "--config", str(path), "--out", str(run), "--device", "cpu"], path)
    assert not run.exists()


def test_predict_refuses_a_bad_config_before_writing(tmp_path, capsys, task):
    path = write(tmp_path, BAD_FILE)
    out = tmp_path / "sub"
    _refused(capsys, ["predict", "--config", str(path), "--data", str(task), "--out", str(out), "--device", "cpu"], path)
    run = tmp_path / "run"  # a run folder whose config.json was edited by hand
    run.mkdir()
    _refused(capsys, ["predict", "--run", str(run), "--data", str(task), "--out", str(out)], write(run, BAD_FILE, "config.json"))
    assert not out.exists()


def test_a_command_line_override_is_checked_and_named(tmp_path, capsys, task):
    path = write(tmp_path, {"predict": {"affine": "rigid", "affine_only": True}}, "affine.json")
    out = tmp_path / "sub"
    argv = ["predict", "--config", str(path), "--data", str(task), "--out", str(out), "--instance-opt-steps", "-1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: {path} with --instance-opt-steps -1: predict.instance_opt_steps: -1 (allowed: an integer >= 0)" in err
    assert not out.exists()


def test_the_lncc_window_reaches_instance_optimisation_and_its_default_keeps_earlier_hashes():
    """``predict.instance_opt_window`` (a later key): 5 reaches the settings of instance optimisation;
    the default 9 (what the local NCC used before the key) leaves the configuration hash as it was."""
    from pipeline.model.instance_opt import InstanceOptSettings

    five = config_from_dict({"predict": {"instance_opt_similarity": "lncc", "instance_opt_window": 5}})
    assert InstanceOptSettings.from_predict(five.predict).window == 5
    assert InstanceOptSettings.from_predict(config_from_dict({}).predict).window == InstanceOptSettings(steps=0).window == 9
    assert config_from_dict({"predict": {"instance_opt_window": 9}}).digest() == config_from_dict({}).digest()
    assert five.digest() != config_from_dict({"predict": {"instance_opt_similarity": "lncc"}}).digest()


def test_the_start_field_smoothing_reaches_instance_optimisation_and_its_default_keeps_earlier_hashes():
    """``predict.instance_opt_presmooth`` (a later key): 3 reaches the settings; the default 0
    (no smoothing: what instance optimisation did before the key) leaves the hash as it was."""
    from pipeline.model.instance_opt import InstanceOptSettings

    three = config_from_dict({"predict": {"instance_opt_presmooth": 3}})
    assert InstanceOptSettings.from_predict(three.predict).presmooth == 3.0
    assert InstanceOptSettings.from_predict(config_from_dict({}).predict).presmooth == InstanceOptSettings(steps=0).presmooth == 0.0
    assert config_from_dict({"predict": {"instance_opt_presmooth": 0.0}}).digest() == config_from_dict({}).digest()
    assert three.digest() != config_from_dict({}).digest()
    with pytest.raises(DataError, match=r"predict.instance_opt_presmooth: -1"):
        config_from_dict({"predict": {"instance_opt_presmooth": -1}})


def test_set_overrides_one_predict_key_and_is_checked_named_and_recorded(tmp_path, capsys, task):
    """``--set KEY=VALUE`` (predict and register): any key of the predict section, recorded with
    the outputs; a bad value is refused naming the option (exit 1, nothing written); an unknown
    key, a key with an option of its own or no '=' is a usage error (exit 2)."""
    path = write(tmp_path, {"predict": {"network": "none", "instance_opt_steps": 1}}, "free.json")
    out = tmp_path / "sub"
    base = ["predict", "--config", str(path), "--data", str(task), "--device", "cpu"]
    assert main([*base, "--out", str(out), "--instance-opt-similarity", "lncc", "--set", "instance_opt_window=3",
                 "--set", "predict.instance_opt_presmooth=1.5"]) == 0
    recorded = json.loads((out / "predict_config.json").read_text())["config"]["predict"]
    assert (recorded["instance_opt_similarity"], recorded["instance_opt_window"], recorded["instance_opt_presmooth"]) == ("lncc", 3, 1.5)
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main([*base, "--out", str(bad), "--set", "instance_opt_window=4"]) == 1
    err = capsys.readouterr().err
    assert f"error: {path} with --set instance_opt_window=4: predict.instance_opt_window: 4 (allowed: an odd number" in err
    assert "Traceback" not in err and not bad.exists()
    for given, says in [("instance_opt_windw=3", "predict.instance_opt_windw is not a key of the predict section"),
                        ("affine=rigid", "predict.affine has its own option: --affine"), ("instance_opt_window", "expected KEY=VALUE")]:
        with pytest.raises(SystemExit) as exc:
            main([*base, "--out", str(bad), "--set", given])
        assert exc.value.code == 2 and says in capsys.readouterr().err and not bad.exists()
    images = task / "imagesTr"
    fixed, moving = sorted(images.glob("*.nii.gz"))[:2]
    one = tmp_path / "one"
    assert main(["register", "--fixed", str(fixed), "--moving", str(moving), "--config", str(path), "--out", str(one),
                 "--device", "cpu", "--no-report", "--instance-opt-similarity", "lncc", "--set", "instance_opt_grid=3"]) == 0
    recorded = json.loads((one / "register.json").read_text())["predict"]
    assert (recorded["instance_opt_grid"], recorded["instance_opt_similarity"]) == (3, "lncc")
