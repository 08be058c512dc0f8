"""The authors' state dicts -> our LapIRN keys (any number of levels, every kind of mismatch named),
safe loading, and the shipped ``weights/`` folder (checksums, licence, what the code recognises)."""

from __future__ import annotations

import doctest
import hashlib
import pickle

import pytest
import torch

from learn2reg.io import DataError
from pipeline.model import authors
from pipeline.model.authors import (
    PUBLISHED,
    AuthorsLayout,
    authors_key,
    infer_authors_layout,
    level_prefix,
    load_authors_state_dict,
    map_authors_state_dict,
    published_file,
    sha256_file,
)
from pipeline.model.lapirn import LapIRN, LapIRNConfig
from tests.paths import REPO

WEIGHTS = REPO / "weights"


def fake_authors_sd(levels: int = 3, start_channel: int = 2, in_channels: int = 1) -> dict[str, torch.Tensor]:
    """An authors'-layout state dict with the right shapes (distinct random values)."""
    w = 4 * start_channel
    gen = torch.Generator().manual_seed(levels)
    sd: dict[str, torch.Tensor] = {}
    for p in range(1, levels + 1):
        pre = level_prefix(p, levels)
        shapes = {
            "input_encoder_lvl1.0.weight": (w, 2 * in_channels + (0 if p == 1 else 3), 3, 3, 3),
            "input_encoder_lvl1.2.weight": (w, w, 3, 3, 3),
            "down_conv.weight": (w, w, 3, 3, 3),
            **{f"resblock_group_lvl1.{i}.conv{j}.weight": (w, w, 3, 3, 3) for i in (0, 2, 4, 6, 8) for j in (1, 2)},
            "up.weight": (w, w, 2, 2, 2),
            "output_lvl1.0.weight": (w, 2 * w, 3, 3, 3),
            "output_lvl1.2.weight": (3, w, 3, 3, 3),
        }
        sd.update({pre + k: torch.randn(s, generator=gen) for k, s in shapes.items()})
    return sd


def test_doctests():
    assert doctest.testmod(authors).failed == 0


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_every_tensor_lands_unchanged_on_our_model_of_the_same_layout(levels):
    sd = fake_authors_sd(levels)
    assert infer_authors_layout(sd) == AuthorsLayout(levels=levels, start_channel=2, in_channels=1)
    model = LapIRN(LapIRNConfig(levels=levels, start_channel=2))
    mapped = map_authors_state_dict(sd, target=model.state_dict())
    assert len(mapped) == len(sd) == 16 * levels == len(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    for ours, tensor in model.state_dict().items():
        assert torch.equal(tensor, sd[authors_key(ours, levels)])  # same values, no transposition


def test_the_coarsest_level_is_the_deepest_nesting():
    sd = fake_authors_sd(3)
    mapped = map_authors_state_dict(sd)
    assert mapped["nets.0.up.weight"] is sd["model_lvl2.model_lvl1.up.weight"]
    assert mapped["nets.1.head.2.weight"] is sd["model_lvl2.output_lvl1.2.weight"]
    assert mapped["nets.2.encoder.0.weight"] is sd["input_encoder_lvl1.0.weight"]
    assert mapped["nets.2.blocks.8.conv2.weight"] is sd["resblock_group_lvl1.8.conv2.weight"]


BROKEN = {
    "unknown key": (lambda sd: {**sd, "model_lvl2.shortcut.0.weight": torch.zeros(1)}, "unknown authors' keys: model_lvl2.shortcut.0.weight"),
    "DataParallel prefix": (lambda sd: {**sd, "module.up.weight": torch.zeros(8, 8, 2, 2, 2)}, "unknown authors' keys: module.up.weight"),
    "missing key": (lambda sd: {k: v for k, v in sd.items() if k != "model_lvl2.up.weight"}, r"missing .*model_lvl2\.up\.weight"),
    "wrong shape": (lambda sd: {**sd, "down_conv.weight": torch.zeros(8, 8, 3, 3, 2)}, r"shape mismatches: nets\.2\.down\.weight: authors \(8, 8, 3, 3, 2\)"),
    "broken nesting": (lambda sd: {**sd, "model_lvl1.up.weight": torch.zeros(8, 8, 2, 2, 2)}, "unexpected nesting"),
    "empty": (lambda sd: {}, "empty state dict"),
}


@pytest.mark.parametrize("edit, message", BROKEN.values(), ids=BROKEN.keys())
def test_a_mismatched_state_dict_is_refused_naming_the_problem(edit, message):
    with pytest.raises(ValueError, match=message):
        map_authors_state_dict(edit(fake_authors_sd()))


def test_every_problem_is_listed_at_once():
    sd = {k: v for k, v in fake_authors_sd().items() if k != "up.weight"}
    sd["extra.weight"] = torch.zeros(1)
    sd["down_conv.weight"] = torch.zeros(1, 1, 1, 1, 1)
    with pytest.raises(ValueError) as err:
        map_authors_state_dict(sd)
    assert all(part in str(err.value) for part in ("unknown authors' keys: extra.weight", "missing", "up.weight", "shape mismatches"))


def test_the_target_decides_what_fits():
    """A 3-level dict against a 2-level model: the authors' keys our model lacks are named."""
    target = LapIRN(LapIRNConfig(levels=2, start_channel=2)).state_dict()
    with pytest.raises(ValueError, match="mapped keys absent from the target: nets.2"):
        map_authors_state_dict(fake_authors_sd(3), target=target)


def test_safe_loading_names_the_file_for_every_kind_of_bad_file(tmp_path):
    sd = fake_authors_sd()
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    assert load_authors_state_dict(good).keys() == sd.keys()
    cases = {
        "missing.pth": (None, "file not found"),
        "text.pth": (b"not a torch file", "cannot be loaded as a torch state dict with weights_only=True"),
        "evil.pth": (pickle.dumps({"up.weight": _Evil()}, protocol=2), "cannot be loaded as a torch state dict with weights_only=True"),
    }
    for name, (content, message) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=f"^{tmp_path / name}: {message}"):
            load_authors_state_dict(tmp_path / name)
    for name, obj, message in [
        ("list.pth", [1, 2], "not a state dict"),
        ("empty.pth", {}, "not a state dict"),
        ("nested.pth", {"state_dict": sd}, "not a state dict: 1 entries are not named tensors"),
        ("ours.pth", {"format": "l2r-lapirn-checkpoint", "model": sd}, "already a checkpoint of this project"),
    ]:
        torch.save(obj, tmp_path / name)
        with pytest.raises(DataError, match=f"^{tmp_path / name}: {message}"):
            load_authors_state_dict(tmp_path / name)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


# ---------------------------------------------------------------------- the shipped weights


def test_the_shipped_weights_match_their_checksums_and_the_recognised_files():
    sums = dict(reversed(line.split()) for line in (WEIGHTS / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"LapIRN_disp_fea7.pth", "LapIRN_diff_fea7.pth"}
    for name, digest in sums.items():
        assert sha256_file(WEIGHTS / name) == digest == hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest()
        known = published_file(digest)
        assert known is not None and known.name == name and name == f"LapIRN_{known.variant}_fea7.pth"
    assert len(PUBLISHED) == 2


def test_the_licence_the_code_records_is_the_shipped_notice_verbatim():
    assert (WEIGHTS / "LICENSE.md").read_text() == authors.LICENSE_TEXT
    assert authors.COPYRIGHT in authors.LICENSE_TEXT and authors.LICENSE_NAME == "MIT"
    readme = (WEIGHTS / "README.md").read_text()
    assert authors.AUTHORS_REPO in readme and authors.AUTHORS_COMMIT in readme


@pytest.mark.parametrize("variant", ["disp", "diff"])
def test_the_published_files_are_complete_3_level_models_with_identical_keys(variant):
    sd = load_authors_state_dict(WEIGHTS / f"LapIRN_{variant}_fea7.pth")
    assert infer_authors_layout(sd) == AuthorsLayout(levels=3, start_channel=7, in_channels=1)
    other = load_authors_state_dict(WEIGHTS / f"LapIRN_{'diff' if variant == 'disp' else 'disp'}_fea7.pth")
    assert list(sd) == list(other) and all(sd[k].shape == other[k].shape for k in sd)  # the variant is not in the keys
    model = LapIRN(LapIRNConfig(start_channel=7))
    model.load_state_dict(map_authors_state_dict(sd, target=model.state_dict()), strict=True)
    assert sum(p.numel() for p in model.parameters()) == 923_748  # ../shared/docs/lapirn.md
