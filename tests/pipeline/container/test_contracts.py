"""The contract table against the organisers' templates: the file names their code writes are the ones
their evaluators accept, their command lines as their scripts write them, and what a check run changes."""

from __future__ import annotations

import pytest

from learn2reg import rules
from learn2reg.io import DataError
from pipeline.container import contracts
from pipeline.container.contracts import (
    CONTRACTS,
    Deltas,
    checked_command,
    moving_modality,
    organiser_command,
    wants_tty,
)

VALUES = {
    "image": "img", "json": "/h/d.json", "input": "/h/in", "output": "/h/out", "data": "/h/data", "model": "/h/model",
    "results": "/h/res", "task": "ThoraxCBCT", "mode": "Val", "json_name": "NLST_dataset.json", "uid": "1000", "gid": "100",
}  # fmt: skip


def template_name(contract: str, fixed: str, moving: str) -> str:
    """The file name each organiser's template writes, by the template's own string rules
    (fixed/moving: image file names ``PREFIX_SSSS_MMMM.nii.gz``)."""
    if contract in ("lumir", "lumir25"):  # infer_script.py / infer_VFA.py: path.split('_')[-2]
        return f"disp_{fixed.split('_')[-2]}_{moving.split('_')[-2]}.nii.gz"
    if contract == "remind2reg":  # run_inference_t1.py: disp_{case}_{fixed_mod}_{case}_{moving_mod}
        case, mod = moving.split("_")[1], moving.split("_")[2][:4]
        return f"disp_{case}_0000_{case}_{mod}.nii.gz"
    if contract == "l2r":  # zerofield.py: basename.split('_')[1] (NLST's 0000 <- 0001 pairs)
        return f"disp_{fixed.split('_')[1]}_{moving.split('_')[1]}.nii.gz"
    case = fixed.removesuffix(".nii.gz")  # inference_vxmpp.py: case.split('T_')[1], case.split('_')[1]
    return f"disp_{case.split('T_')[1]}_{case.split('_')[1]}_0000.nii.gz"


@pytest.mark.parametrize(
    ("contract", "fixed", "moving"),
    [
        ("lumir", "LUMIRMRI_3455_0000.nii.gz", "LUMIRMRI_3454_0000.nii.gz"),
        ("lumir25", "LUMIRMRI_4024_0000.nii.gz", "LUMIRMRI_4033_0001.nii.gz"),  # MultiModal: short name, 0000 <- 0001
        ("remind2reg", "ReMIND2Reg_0099_0000.nii.gz", "ReMIND2Reg_0099_0002.nii.gz"),
        ("l2r", "NLST_0101_0000.nii.gz", "NLST_0101_0001.nii.gz"),
        ("oncoreg", "ThoraxCBCT_0011_0002.nii.gz", "ThoraxCBCT_0011_0000.nii.gz"),
    ],
)
def test_the_name_we_write_is_accepted_by_the_evaluator_and_is_the_templates_where_it_may_be(contract, fixed, moving):
    c = CONTRACTS[contract]
    fixed_id, moving_id = fixed[-16:-7], moving[-16:-7]  # the evaluators' slices: SSSS_MMMM
    ours = rules.disp_name(c.rules, fixed_id, moving_id)
    assert ours in rules.disp_candidates(rules.get(c.rules), fixed_id, moving_id)
    theirs = template_name(contract, fixed, moving)
    assert theirs in rules.disp_candidates(rules.get(c.rules), fixed_id, moving_id), "the template's own name is accepted too"
    if contract != "l2r":  # L2R's zerofield writes the short name; the long one is accepted for every pair (HEAD)
        assert ours == theirs


def test_the_l2r_template_name_fails_where_ours_does_not():
    """The zerofield template's short name is only valid for 0000 <- 0001; ours is valid for every pair."""
    fixed_id, moving_id = "0011_0001", "0011_0000"
    assert "disp_0011_0011.nii.gz" not in rules.disp_candidates(rules.L2R, fixed_id, moving_id)
    assert rules.disp_name("l2r", fixed_id, moving_id) == "disp_0011_0001_0011_0000.nii.gz"


@pytest.mark.parametrize(
    ("contract", "train", "expected"),
    [
        ("lumir", False, "docker run --rm --ipc=host --memory 16g --mount type=bind,source=/h/d.json,target=/LUMIR_dataset.json "
                         "--mount type=bind,source=/h/in,target=/input --mount type=bind,source=/h/out,target=/output img"),
        ("lumir25", False, "docker run --rm --ipc=host --memory 256g --gpus device=0 --user 1000:100 --network=none "
                           "--mount type=bind,source=/h/d.json,target=/app/LUMIR25_dataset.json --mount type=bind,source=/h/in,target=/app/input "
                           "--mount type=bind,source=/h/out,target=/app/output img"),
        ("remind2reg", False, "docker run --rm -v /h/in:/input/:ro -v /h/out:/output -it img"),
        ("l2r", False, "docker run --rm --mount src=/h/data,target=/l2r/data,type=bind --mount src=/h/out,target=/l2r/output,type=bind "
                       "img -c /l2r/data/NLST_dataset.json"),
        ("oncoreg", True, "docker run --gpus all --entrypoint ./train.sh -v /h/data:/oncoreg/data -v /h/model:/oncoreg/model/ img ThoraxCBCT"),
        ("oncoreg", False, "docker run --gpus all --entrypoint ./test.sh -v /h/data:/oncoreg/data -v /h/model:/oncoreg/model/ "
                           "-v /h/res:/oncoreg/results/ img ThoraxCBCT Val"),
    ],
)  # fmt: skip
def test_the_organisers_command_lines_as_their_scripts_write_them(contract, train, expected):
    assert " ".join(organiser_command(CONTRACTS[contract], VALUES, train=train)) == expected


def test_only_oncoreg_trains_in_the_image():
    with pytest.raises(DataError, match="do not train"):
        organiser_command(contracts.LUMIR, VALUES, train=True)


@pytest.mark.parametrize(
    ("contract", "train", "gpu", "added", "dropped", "notes"),
    [
        ("lumir", False, False, ["--network=none", ",readonly"], [], 3),
        ("lumir25", False, False, [",readonly"], ["--gpus"], 3),  # --network=none is theirs already
        ("lumir25", False, True, [",readonly"], [], 2),  # a GPU runtime: --gpus stays
        ("remind2reg", False, False, ["--network=none"], [], 1),  # input already :ro, --rm already there
        ("l2r", False, False, ["--network=none", ",readonly"], [], 2),
        ("oncoreg", True, False, ["--network=none", "--rm", "/oncoreg/data:ro"], ["--gpus"], 4),
        ("oncoreg", False, False, ["--network=none", "--rm", "/oncoreg/data:ro"], ["--gpus"], 4),
    ],
)
def test_a_check_run_changes_only_what_this_machine_needs_and_says_so(contract, train, gpu, added, dropped, notes):
    c = CONTRACTS[contract]
    theirs = organiser_command(c, VALUES, train=train)
    ours, changes = checked_command(c, theirs, Deltas(drop_gpus=not gpu))
    text = " ".join(ours)
    assert all(a in text for a in added) and not any(d in ours for d in dropped)
    assert len(changes) == notes, changes
    outputs = [a for a in ours if any(t in a for t in ("/out", "/h/res", "/h/model"))]
    assert not [a for a in outputs if a.endswith(":ro") or a.endswith(",readonly")], "outputs stay writable"
    assert ours[-1 - (len(theirs) - 1 - theirs.index("img")):] == theirs[theirs.index("img"):], "the image and its arguments come last, unchanged"


def test_tty_commands_are_recognised():
    assert wants_tty(organiser_command(contracts.REMIND2REG, VALUES))
    assert not wants_tty(organiser_command(contracts.LUMIR, VALUES))


def test_remind2reg_needs_one_moving_sequence_and_the_others_none():
    assert moving_modality(contracts.REMIND2REG, "ceT1") == "0001"
    assert moving_modality(contracts.REMIND2REG, "T2") == moving_modality(contracts.REMIND2REG, "0002") == "0002"
    with pytest.raises(DataError, match=r"--sequence is required, one of ceT1 \(0001\), T2 \(0002\)"):
        moving_modality(contracts.REMIND2REG, None)
    with pytest.raises(DataError, match="remind2reg only"):
        moving_modality(contracts.LUMIR, "T2")
    assert moving_modality(contracts.L2R, None) is None


def test_every_contract_names_a_rule_set_its_sources_and_what_to_hand_in():
    for c in CONTRACTS.values():
        assert c.rules in rules.RULES and "@" in c.source and c.handin and c.facts
        assert c.workdir.startswith("/") and c.output_dir.startswith("/")
    with pytest.raises(DataError, match="unknown contract 'x'"):
        contracts.get("x")
