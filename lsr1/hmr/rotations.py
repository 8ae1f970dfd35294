"""Rotation representations for SMPL poses: axis-angle (3 per joint), 6D (6 per joint) and 3x3 matrices.

6D is the first two columns of the rotation matrix (Zhou et al. 2019), mapped back by Gram-Schmidt; it is
continuous, unlike axis-angle near pi. All functions are batched over leading axes and differentiable;
`axis_angle_to_matrix` has finite gradients at the zero rotation (SMPL's rest pose, AMASS's zeroed hands).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "axis_angle_to_matrix",
    "euler_zyx_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_rotation_6d",
    "rotation_6d_to_matrix",
    "skew",
]

_SMALL = 1e-6  # squared angle below which the Taylor series replace sin(a)/a and (1 - cos a)/a^2


def skew(v: Tensor) -> Tensor:
    """Cross-product matrices [v]_x: (..., 3) -> (..., 3, 3)."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(aa: Tensor) -> Tensor:
    """Rodrigues' formula R = I + sin(a)/a K + (1 - cos a)/a^2 K^2, K = [aa]_x: (..., 3) -> (..., 3, 3)."""
    sq = (aa * aa).sum(-1)
    small = sq < _SMALL
    safe = torch.where(small, torch.ones_like(sq), sq)  # never a sqrt of 0: its gradient would be NaN
    angle = safe.sqrt()
    a = torch.where(small, 1.0 - sq / 6.0, torch.sin(angle) / angle)
    b = torch.where(small, 0.5 - sq / 24.0, 2.0 * torch.sin(0.5 * angle).square() / safe)
    k = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_axis_angle(rot: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3) with angle in [0, pi], through the quaternion
    (Shepperd's method: the largest of w, x, y, z is computed first, so no branch loses precision)."""
    m = rot
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # four candidate quaternions (w, x, y, z), each scaled by 4 times its largest component
    candidates = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack(
                [m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - trace, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1
            ),
            torch.stack(
                [m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - trace, m[..., 1, 2] + m[..., 2, 1]], -1
            ),
            torch.stack(
                [m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - trace], -1
            ),
        ],
        dim=-2,
    )  # (..., 4, 4)
    diagonal = torch.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diagonal.argmax(-1)[..., None, None].expand(*diagonal.shape[:-1], 1, 4)
    quat = F.normalize(candidates.gather(-2, best).squeeze(-2), dim=-1)
    quat = torch.where(quat[..., :1] < 0, -quat, quat)  # w >= 0: angle in [0, pi]
    sin_half = quat[..., 1:].norm(dim=-1)
    angle = 2.0 * torch.atan2(sin_half, quat[..., 0])
    scale = torch.where(sin_half > 1e-8, angle / sin_half.clamp_min(1e-8), torch.full_like(angle, 2.0))
    return quat[..., 1:] * scale[..., None]


def rotation_6d_to_matrix(r6: Tensor) -> Tensor:
    """6D (two columns a1, a2) -> rotation with columns b1 = a1/|a1|, b2 = Gram-Schmidt(a2), b3 = b1 x b2.

    r6: (..., 6) -> (..., 3, 3).
    """
    a1, a2 = r6[..., :3], r6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(rot: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, column after column."""
    return torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1)


def euler_zyx_to_matrix(angles: Tensor) -> Tensor:
    """R = Rz(z) Ry(y) Rx(x) for angles (..., 3) = (x, y, z) in radians (LGD's `euler_to_rot` order)."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[..., 0]), torch.zeros_like(cos[..., 0])

    def stack(*rows: Tensor) -> Tensor:
        return torch.stack(rows, dim=-1).reshape(*angles.shape[:-1], 3, 3)

    cx, cy, cz = cos.unbind(-1)
    sx, sy, sz = sin.unbind(-1)
    rx = stack(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    ry = stack(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rz = stack(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    return rz @ ry @ rx
