import math

import pytest
import torch

from lsr1.hmr.camera import keep_mask, normalize_keypoints, project, random_rotations
from lsr1.hmr.metrics import mpjpe, pa_mpjpe, procrustes_align
from lsr1.hmr.rotations import (
    axis_angle_to_matrix,
    euler_zyx_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)
from tests.helpers import assert_close

F64 = torch.float64


def test_rotation_representations_round_trip():
    aa = torch.randn(500, 3, dtype=F64) * 1.2
    aa[0], aa[1], aa[2] = 0.0, torch.tensor([math.pi - 1e-9, 0, 0]), torch.tensor([0, 1e-5, 0])
    rot = axis_angle_to_matrix(aa)
    assert_close(rot.transpose(-1, -2) @ rot, torch.eye(3, dtype=F64).expand(500, 3, 3), atol=1e-12)
    assert_close(axis_angle_to_matrix(matrix_to_axis_angle(rot)), rot, atol=1e-9)
    assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(rot)), rot, atol=1e-12)
    assert float(matrix_to_axis_angle(rot).norm(dim=-1).max()) <= math.pi + 1e-9


def test_axis_angle_has_finite_gradients_at_zero_and_matches_autograd():
    x = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad((axis_angle_to_matrix(x) * torch.randn(2, 3, 3, dtype=F64)).sum(), x)
    assert torch.isfinite(g).all()
    y = (0.7 * torch.randn(4, 3, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (y,))
    z = torch.randn(4, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (z,))


def test_euler_order_is_z_y_x():
    a = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    r = lambda axis, t: axis_angle_to_matrix(t * torch.eye(3, dtype=F64)[axis])  # noqa: E731
    assert_close(euler_zyx_to_matrix(a), r(2, a[2]) @ r(1, a[1]) @ r(0, a[0]), atol=1e-12)


def test_lgd_camera_projection():
    points = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, -0.5, 2.0]]], dtype=F64)
    expected = torch.tensor([[[0.0, 0.0], [256 / 6, -256 / 6], [128 / 4, 128 / 4]]], dtype=F64)
    assert_close(project(points), expected)


def test_normalize_keypoints_uses_the_confident_bounding_box():
    kp = torch.tensor([[[0.0, 0.0], [4.0, 2.0], [2.0, 1.0], [100.0, 100.0]]], dtype=F64)
    conf = torch.tensor([[1.0, 1.0, 0.5, 0.0]], dtype=F64)
    out = normalize_keypoints(kp, conf)
    assert_close(out, torch.tensor([[[0.0, 0.25], [1.0, 0.75], [0.5, 0.5], [0.5, 0.5]]], dtype=F64))
    single = normalize_keypoints(kp, torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64))
    none = normalize_keypoints(kp, torch.zeros(1, 4, dtype=F64))
    assert (single == 0.5).all() and (none == 0.5).all()  # LGD would give NaN here
    x = kp.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(normalize_keypoints(x, conf).sum(), x)
    assert torch.isfinite(g).all() and (g[0, 3] == 0).all()


def test_random_rotations_follow_lgd_ranges():
    rot = random_rotations(4000, torch.Generator().manual_seed(0))
    assert_close(torch.linalg.det(rot), torch.ones(4000, dtype=F64), atol=1e-12)
    up = rot[:, :, 1]  # where the body's up axis goes
    tilt = torch.rad2deg(torch.arccos(up[:, 1].clamp(-1, 1)))
    assert 30 < float(tilt.max()) <= 40 + 1e-9  # Rz Ry Rx with |x|, |z| <= 20 deg tilts the body by at most 40
    forward = rot[:, :, 2]
    heading = torch.rad2deg(torch.atan2(forward[:, 0], forward[:, 2]))
    assert float(heading.min()) < -170 and float(heading.max()) > 170  # all headings
    mask = keep_mask(1000, 18, 0.8, torch.Generator().manual_seed(1))
    assert set(mask.unique().tolist()) == {0.0, 1.0} and abs(float(mask.mean()) - 0.8) < 0.01


def test_pa_mpjpe_of_a_similar_copy_is_zero_and_a_mirror_is_not():
    gt = torch.randn(6, 14, 3, dtype=F64)
    rot = axis_angle_to_matrix(torch.randn(6, 3, dtype=F64))
    copy = 3.0 * gt @ rot.transpose(1, 2) + torch.randn(6, 1, 3, dtype=F64)
    assert float(pa_mpjpe(copy, gt).max()) < 1e-9
    assert_close(procrustes_align(copy, gt), gt, atol=1e-12)
    mirror = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    assert float(pa_mpjpe(mirror, gt).min()) > 1.0  # reflections are not similarity transforms here
    assert pa_mpjpe(copy.float(), gt.float()).dtype == torch.float32


def test_mpjpe_is_in_millimetres():
    gt = torch.zeros(2, 14, 3)
    pred = gt + torch.tensor([0.003, 0.004, 0.0])  # 5 mm off everywhere
    assert_close(mpjpe(pred, gt), torch.full((2,), 5.0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"\(B, J, 3\)"):
        mpjpe(pred[:, :3], gt)
