"""3D joint errors: MPJPE and PA-MPJPE (mean per-joint position error, after Procrustes alignment).

Inputs are (B, J, 3) joints in metres, outputs (B,) in millimetres. PA aligns the prediction to the ground
truth with the similarity (scale, rotation, translation) that minimises the squared error, reflections
excluded (as LGD's and SPIN's `compute_similarity_transform`), computed batched in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mpjpe", "pa_mpjpe", "procrustes_align"]


def _check(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.dim() != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both have shape (B, J, 3), got {tuple(pred.shape)} and {tuple(gt.shape)}")


def mpjpe(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean Euclidean distance per joint, in mm, without any alignment (centre both first if needed)."""
    _check(pred, gt)
    return 1000.0 * (pred - gt).norm(dim=-1).mean(-1)


def procrustes_align(pred: Tensor, gt: Tensor) -> Tensor:
    """pred (B, J, 3) mapped by the best similarity s R x + t onto gt (B, J, 3); R a proper rotation."""
    return _align(pred, gt).to(pred.dtype)


def _align(pred: Tensor, gt: Tensor) -> Tensor:
    _check(pred, gt)
    x, y = pred.double(), gt.double()
    mx, my = x.mean(1, keepdim=True), y.mean(1, keepdim=True)
    x0, y0 = x - mx, y - my
    cov = x0.transpose(1, 2) @ y0  # (B, 3, 3) = sum_j x_j y_j^T
    u, s, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))  # -1: the optimum is a reflection
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    d = torch.cat([torch.ones_like(s[:, :2]), sign[:, None]], dim=1)
    rot = vh.transpose(1, 2) @ torch.diag_embed(d) @ u.transpose(1, 2)  # maps x0 onto y0
    scale = (s * d).sum(-1) / x0.pow(2).sum((1, 2)).clamp_min(1e-12)
    return scale[:, None, None] * x0 @ rot.transpose(1, 2) + my


def pa_mpjpe(pred: Tensor, gt: Tensor) -> Tensor:
    """MPJPE in mm after Procrustes alignment of pred onto gt (scale, rotation, translation)."""
    return mpjpe(_align(pred, gt), gt.double()).to(pred.dtype)
