"""NGF metric and rigid/affine registration: analytic values, autograd vs finite differences,
and recovery of known transforms between differently gridded, differently contrasted images."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from learn2reg.contract import affine_to_field, physical_to_voxel_affine, resize_image
from learn2reg.io import Geometry
from pipeline.affine.ngf import (
    NGFProblem,
    make_level,
    ngf,
    ngf_distance,
    normalized_gradient,
    spatial_gradient,
)
from pipeline.affine.registration import AffineConfig, make_transform, register_affine

# ------------------------------------------------------------------------- phantom
# Tissues are a body ellipsoid with separate smaller ellipsoids inside (centre mm, radii mm,
# tissue index) with a smooth (partial-volume) border; each modality gives every tissue its
# own value, so the modalities share edge positions but not intensities (non-monotonic,
# inversions included). The inner structures do not touch: blurred thin shells between two
# edges look different under different contrasts and bias any edge-based metric (~0.5 deg).


def _separated_blobs(count: int = 12, seed: int = 42) -> list:
    rng = np.random.default_rng(seed)
    blobs = [((0.0, 0.0, 0.0), (24.0, 19.0, 21.0), 0)]
    while len(blobs) < count + 1:
        direction = rng.normal(size=3)
        centre = direction / np.linalg.norm(direction) * rng.uniform(3, 15) * np.array([1.0, 0.8, 0.9])
        radii = rng.uniform(2.5, 5.5, 3)
        apart = all(np.linalg.norm(centre - np.asarray(c)) > radii.max() + max(r) + 2.0 for c, r, _ in blobs[1:])
        if apart and np.all(np.abs(centre) + radii < (22.0, 17.0, 19.0)):
            blobs.append((tuple(centre), tuple(radii), 1 + (len(blobs) - 1) % 4))
    return blobs


BLOBS = _separated_blobs(count=10)
VALUES_A = (0.5, 0.1, 0.3, 0.8, 1.0)  # tissue -> intensity, modality A; background 0
VALUES_B = (0.15, 0.45, 1.0, 0.6, 0.3)  # modality B: a non-monotonic remapping; background 0.75
BACKGROUND = {"A": 0.0, "B": 0.75}


def phantom(points: np.ndarray, modality: str = "A", width: float = 0.8) -> np.ndarray:
    """Intensity at physical points (``N x 3`` mm)."""
    values = VALUES_A if modality == "A" else VALUES_B
    out = np.full(len(points), BACKGROUND[modality])
    for centre, radii, tissue in BLOBS:
        d = np.sqrt((((points - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(axis=1))
        occupancy = 1.0 / (1.0 + np.exp(-(1.0 - d) * np.mean(radii) / width))
        out = out * (1.0 - occupancy) + values[tissue] * occupancy
    return out


def centred_geometry(shape, spacing, direction=None, centre=(0.0, 0.0, 0.0)) -> Geometry:
    """Grid whose centre lies at ``centre`` (mm); axis-aligned unless ``direction`` (3x3) is given."""
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    offset = direction @ (np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0)
    return Geometry(tuple(shape), tuple(float(s) for s in spacing), tuple(direction.ravel()), tuple(np.asarray(centre) - offset))


def render(geom: Geometry, modality: str = "A", transform: np.ndarray | None = None, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Image on ``geom`` of the phantom moved so that fixed mm ``x`` shows up at ``transform @ x``."""
    index = np.indices(geom.shape).reshape(3, -1).T
    points = index @ geom.index_to_physical[:3, :3].T + geom.index_to_physical[:3, 3]
    if transform is not None:
        inverse = np.linalg.inv(transform)
        points = points @ inverse[:3, :3].T + inverse[:3, 3]
    image = phantom(points, modality).reshape(geom.shape)
    if noise:
        image = image + np.random.default_rng(seed).normal(0.0, noise, geom.shape)
    return image.astype(np.float32)


def rigid(angles_deg, translation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    m[:3, 3] = translation
    return m


def rotation_error_deg(found: np.ndarray, true: np.ndarray) -> float:
    return float(np.linalg.norm(Rotation.from_matrix(found[:3, :3] @ true[:3, :3].T).as_rotvec(degrees=True)))


def max_displacement_error(found: np.ndarray, true: np.ndarray, radius: float = 22.0) -> float:
    """Largest ``|found(x) - true(x)|`` (mm) over a grid of points within ``radius`` mm of the centre."""
    axis = np.arange(-radius, radius + 1e-9, 4.0)
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    pts = pts[np.linalg.norm(pts, axis=1) <= radius]
    diff = found - true
    return float(np.linalg.norm(pts @ diff[:3, :3].T + diff[:3, 3], axis=1).max())


FIXED_GEOM = centred_geometry((64, 64, 64), (1.0, 1.0, 1.0))
# The moving grid differs in shape, spacing, orientation and position.
MOVING_GEOM = centred_geometry((60, 70, 56), (1.1, 0.95, 1.2), Rotation.from_euler("z", 90, degrees=True).as_matrix(), (1.5, -2.0, 0.5))
SMALL_GEOM = centred_geometry((40, 40, 40), (1.5, 1.5, 1.5))


@pytest.fixture(scope="module")
def fixed_image() -> np.ndarray:
    return render(FIXED_GEOM, "A")


# ------------------------------------------------------------------------- NGF by hand


def test_spatial_gradient_of_a_ramp_is_exact_inside_and_halved_on_faces():
    spacing = (0.5, 2.0, 1.25)
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip((6, 7, 8), spacing, strict=True)), indexing="ij")
    image = torch.from_numpy(3.0 * x - 2.0 * y + 0.5 * z)[None, None]
    g = spatial_gradient(image, spacing)[0].numpy()
    np.testing.assert_allclose(g[0, 1:-1], 3.0, atol=1e-12)
    np.testing.assert_allclose(g[1, :, 1:-1], -2.0, atol=1e-12)
    np.testing.assert_allclose(g[2, :, :, 1:-1], 0.5, atol=1e-12)
    np.testing.assert_allclose(g[0, 0], 1.5, atol=1e-12)  # replicate padding: half difference


def test_ngf_distances_of_constant_gradient_fields_match_hand_values():
    n = 10
    grad = torch.zeros(1, 3, n)
    grad[:, 0] = 2.0
    n_f = normalized_gradient(grad, 1.0)  # |n| = 2 / sqrt(5)
    np.testing.assert_allclose(n_f.norm(dim=1).numpy(), 2.0 / np.sqrt(5.0), rtol=1e-6)
    other = torch.zeros(1, 3, n)
    other[:, 0] = -6.0  # antiparallel, stronger
    n_m = normalized_gradient(other, 2.0)  # |n| = 6 / sqrt(40)
    expected_classical = 1.0 - (4.0 / 5.0) * (36.0 / 40.0)
    assert float(ngf_distance(n_f, n_m, metric="ngf")) == pytest.approx(expected_classical, rel=1e-6)
    assert float(ngf_distance(n_f, n_m, metric="ngf-normalized")) == pytest.approx(0.0, abs=1e-6)
    orthogonal = torch.zeros(1, 3, n)
    orthogonal[:, 1] = 5.0
    for metric in ("ngf", "ngf-normalized"):
        assert float(ngf_distance(n_f, normalized_gradient(orthogonal, 1.0), metric=metric)) == pytest.approx(1.0)
    weight = torch.zeros(1, 1, n)
    weight[..., :5] = 1.0  # orthogonal on the first half only, zero weight elsewhere
    mixed = torch.cat([orthogonal[..., :5], grad[..., 5:]], dim=-1)
    assert float(ngf_distance(n_f, normalized_gradient(mixed, 1.0), weight, "ngf")) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="metric"):
        ngf_distance(n_f, n_m, metric="ncc")


@pytest.mark.parametrize("metric", ["ngf", "ngf-normalized"])
def test_ngf_ignores_contrast_inversion_and_intensity_scale(metric, fixed_image):
    f = torch.from_numpy(fixed_image)[None, None]
    same = float(ngf(f, f, FIXED_GEOM.spacing, 1.0, metric))
    inverted = float(ngf(f, 7.0 - 3.0 * f, FIXED_GEOM.spacing, 1.0, metric))
    assert inverted == pytest.approx(same, abs=1e-5)
    shifted = float(ngf(f, torch.roll(f, 3, dims=2), FIXED_GEOM.spacing, 1.0, metric))
    assert shifted > same + 0.02  # a 3 mm shift is seen


@pytest.mark.parametrize("n_params", [6, 12])
def test_ngf_problem_autograd_matches_finite_differences(n_params):
    from pipeline.affine.registration import _physical_matrix

    fixed = render(SMALL_GEOM, "A")
    moving = render(SMALL_GEOM, "B", rigid((3, -2, 4), (1.0, 2.0, -1.5)))
    levels = [make_level(img, SMALL_GEOM, SMALL_GEOM.shape, 0.7) for img in (fixed, moving)]
    problem = NGFProblem(*levels, eps=4.0, metric="ngf-normalized", samples=20_000, rng=np.random.default_rng(0))
    centre = torch.zeros(3, dtype=torch.float64)
    mode = "rigid" if n_params == 6 else "affine"

    def loss(p: torch.Tensor) -> torch.Tensor:
        return problem.loss(_physical_matrix(p, mode, centre, 30.0))

    x = torch.tensor(np.random.default_rng(1).uniform(-1.0, 1.0, n_params), requires_grad=True)
    loss(x).backward()
    numeric = []
    with torch.no_grad():
        for i in range(n_params):
            step = torch.zeros(n_params, dtype=torch.float64)
            step[i] = 0.05
            numeric.append((float(loss(x + step)) - float(loss(x - step))) / 0.1)
    np.testing.assert_allclose(x.grad.numpy(), numeric, rtol=0.05, atol=0.03 * np.abs(numeric).max())


# ------------------------------------------------------------------------- recovery


def test_rigid_recovery_monomodal_across_different_grids(fixed_image):
    true = rigid((6, -8, 5), (3.0, -2.5, 1.5))
    moving = render(MOVING_GEOM, "A", true)
    result = register_affine(fixed_image, moving, FIXED_GEOM, MOVING_GEOM, AffineConfig(mode="rigid"))
    assert rotation_error_deg(result.matrix, true) < 0.5
    assert np.linalg.norm(result.matrix[:3, 3] - true[:3, 3]) < 0.5  # at the centre, in mm = voxels
    assert result.metric_final < result.metric_initial
    assert result.runtime_s > 0.0 and result.to_dict()["runtime_s"] == result.runtime_s  # recorded (speed: bench/)
    assert len(result.evaluations) == len(AffineConfig().iterations) and all(n > 0 for n in result.evaluations)


def test_rigid_recovery_multimodal_nonmonotonic_intensities_with_noise(fixed_image):
    true = rigid((-5, 7, -6), (-2.0, 3.0, 2.5))
    moving = render(MOVING_GEOM, "B", true, noise=0.03, seed=3)
    result = register_affine(fixed_image, moving, FIXED_GEOM, MOVING_GEOM, AffineConfig(mode="rigid"))
    assert result.metric == "ngf-normalized"
    assert rotation_error_deg(result.matrix, true) < 0.5
    assert np.linalg.norm(result.matrix[:3, 3] - true[:3, 3]) < 0.5
    assert max_displacement_error(result.matrix, true) < 0.5


def test_affine_recovery_of_known_scaling_and_shear(fixed_image):
    true = np.eye(4)
    linear = np.array([[1.08, 0.05, 0.0], [0.0, 0.93, -0.04], [0.03, 0.0, 1.05]])
    true[:3, :3] = Rotation.from_euler("xyz", [4, -3, 6], degrees=True).as_matrix() @ linear
    true[:3, 3] = [2.0, -3.0, 1.0]
    moving = render(MOVING_GEOM, "B", true, noise=0.03, seed=5)
    result = register_affine(fixed_image, moving, FIXED_GEOM, MOVING_GEOM, AffineConfig(mode="affine"))
    assert result.metric == "ngf-normalized"
    assert np.abs(result.matrix[:3, :3] - true[:3, :3]).max() < 0.02
    assert max_displacement_error(result.matrix, true) < 0.5
    assert isinstance(result.transform, sitk.AffineTransform)


@pytest.mark.slow
def test_classical_ngf_drifts_towards_magnification_with_12_dof(fixed_image):
    """Why affine mode uses the normalised form: the classical one shrinks the linear part."""
    true = rigid((2, -3, 4), (1.0, 1.0, -1.0))
    moving = render(MOVING_GEOM, "A", true)
    dets = {}
    for metric in ("ngf", "ngf-normalized"):
        result = register_affine(fixed_image, moving, FIXED_GEOM, MOVING_GEOM, AffineConfig(mode="affine", metric=metric))
        dets[metric] = np.linalg.det(result.matrix[:3, :3])
    assert dets["ngf"] < 0.97
    assert abs(dets["ngf-normalized"] - 1.0) < 0.01


def test_result_frames_agree_with_the_contract_and_simpleitk():
    fixed = render(SMALL_GEOM, "A")
    moving_geom = centred_geometry((36, 44, 38), (1.6, 1.4, 1.5), Rotation.from_euler("x", 180, degrees=True).as_matrix(), (2, 1, -1))
    true = rigid((3, 0, -4), (1.0, -1.0, 2.0))
    result = register_affine(fixed, render(moving_geom, "A", true), SMALL_GEOM, moving_geom, AffineConfig(mode="rigid"))
    np.testing.assert_allclose(
        result.voxel_matrix, physical_to_voxel_affine(result.matrix, SMALL_GEOM.index_to_physical, moving_geom.index_to_physical)
    )
    np.testing.assert_allclose(result.field(), affine_to_field(result.voxel_matrix, SMALL_GEOM.shape))
    transform = result.transform
    assert isinstance(transform, sitk.Euler3DTransform)
    np.testing.assert_allclose(transform.GetCenter(), result.center)
    points = np.random.default_rng(0).uniform(-20, 20, (5, 3))
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in points])
    np.testing.assert_allclose(mapped, points @ result.matrix[:3, :3].T + result.matrix[:3, 3], atol=1e-6)
    assert rotation_error_deg(result.matrix, true) < 1.0  # coarse grid (1.5 mm): a looser bound
    assert np.linalg.norm(result.matrix[:3, 3] - true[:3, 3]) < 0.75


def test_make_transform_round_trips_rigid_and_affine_matrices():
    centre = (4.0, -3.0, 10.0)
    for mode, matrix in (("rigid", rigid((10, -20, 30), (5, 6, -7))), ("affine", np.array([[1.1, 0.1, 0, 1], [0, 0.9, 0.05, 2], [0.02, 0, 1.2, 3], [0, 0, 0, 1]]))):
        transform = make_transform(matrix, centre, mode)
        points = np.random.default_rng(1).uniform(-30, 30, (6, 3))
        mapped = np.array([transform.TransformPoint(tuple(p)) for p in points])
        np.testing.assert_allclose(mapped, points @ matrix[:3, :3].T + matrix[:3, 3], atol=1e-9)


# ------------------------------------------------------------------------- options


def test_translation_search_finds_a_shift_beyond_the_local_basin():
    fixed = render(SMALL_GEOM, "A")
    true = rigid((0, 0, 0), (13.0, -12.0, 9.0))
    moving = render(SMALL_GEOM, "B", true)
    config = AffineConfig(search_radius=14.0, search_step=4.0)
    result = register_affine(fixed, moving, SMALL_GEOM, SMALL_GEOM, config)
    assert result.evaluations[0] == 0  # the level coarser than the search is skipped
    assert np.linalg.norm(result.matrix[:3, 3] - true[:3, 3]) < 0.75  # half a 1.5 mm voxel


def test_center_initialisation_bridges_far_apart_grids():
    fixed = render(SMALL_GEOM, "A")
    offset = np.array([40.0, -35.0, 30.0])
    moving_geom = centred_geometry(SMALL_GEOM.shape, SMALL_GEOM.spacing, centre=offset)
    true = rigid((2, -3, 1), offset + [1.0, 0.5, -1.0])
    moving = render(moving_geom, "A", true)
    result = register_affine(fixed, moving, SMALL_GEOM, moving_geom, AffineConfig(init="center"))
    assert np.linalg.norm(result.matrix[:3, 3] - true[:3, 3]) < 0.75
    assert rotation_error_deg(result.matrix, true) < 1.0


def test_moving_field_of_view_keeps_its_border_out_of_the_metric(fixed_image):
    true = rigid((3, -4, 2), (2.0, 1.0, -2.0))
    moving = render(FIXED_GEOM, "B", true) + 0.05
    index = np.indices(moving.shape) / 63.0
    moving[(index[0] + index[1] < 0.75) | (index[2] > 0.8)] = 0.0  # 43 % outside the field of view
    with_fov = register_affine(fixed_image, moving, FIXED_GEOM, FIXED_GEOM, AffineConfig(moving_fov=True))
    assert with_fov.metric == "ngf"  # auto: the classical form with a field of view
    assert rotation_error_deg(with_fov.matrix, true) < 2.0  # half the anatomy is gone: looser
    assert np.linalg.norm(with_fov.matrix[:3, 3] - true[:3, 3]) < 0.5
    # The mechanism, exactly: the level that enters the metric leaves out every voxel within the
    # margin of the field of view's border (where the cut would be an edge), and keeps the rest.
    # (Not compared with a run without the field of view: two optimiser runs differ by CPU/BLAS.)
    shape = tuple(n // 2 for n in moving.shape)
    level = make_level(moving, FIXED_GEOM, shape, 1.0, moving != 0, margin=4.5)  # image voxels: 2.2 level voxels here
    kept = level.fov[0, 0].numpy() > 0
    inside = resize_image((moving != 0).astype(np.float32), shape, order=1) > 0.999
    assert not kept[~inside].any() and 0.4 < kept.mean() < inside.mean()
    assert ndimage.distance_transform_edt(inside)[kept].min() > 2.0
    coarse = make_level(moving, FIXED_GEOM, tuple(n // 8 for n in moving.shape), 1.0, moving != 0, margin=4.0)
    inside = resize_image((moving != 0).astype(np.float32), coarse.image.shape[2:], order=1) > 0.999
    assert ndimage.distance_transform_edt(inside)[coarse.fov[0, 0].numpy() > 0].min() > 1.0  # at least one level voxel


# ------------------------------------------------------------------------- configuration and input errors


def test_config_rejects_unknown_keys_and_bad_values():
    config = AffineConfig.from_dict({"mode": "affine", "iterations": [5, 5, 5], "eps": 2.0})
    assert config.iterations == (5, 5, 5) and config.resolved_metric() == "ngf-normalized"
    assert AffineConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown affine config keys"):
        AffineConfig.from_dict({"mode": "rigid", "learning_rate": 1.0})
    for bad in ({"mode": "similarity"}, {"levels": 2}, {"metric": "mi"}, {"eps": 0.0}, {"init": "moments"}, {"search_step": 0.0}):
        with pytest.raises(ValueError):
            AffineConfig.from_dict(bad)


def test_bad_inputs_are_rejected_with_a_message():
    image = render(SMALL_GEOM, "A")
    config = AffineConfig(iterations=(1, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        register_affine(image, np.where(image > 0.4, np.nan, image), SMALL_GEOM, SMALL_GEOM, config)
    with pytest.raises(ValueError, match="3-D"):
        register_affine(image[..., 0], image, SMALL_GEOM, SMALL_GEOM, config)
    with pytest.raises(ValueError, match="geometry"):
        register_affine(image[:-2], image, SMALL_GEOM, SMALL_GEOM, config)
    with pytest.raises(ValueError, match="mask"):
        register_affine(image, image, SMALL_GEOM, SMALL_GEOM, config, fixed_mask=np.ones((3, 3, 3)))
