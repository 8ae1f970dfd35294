"""Keypoints and camera of LGD's HMR protocol (notes/lgd-protocol.md §2-4).

SMPL_TO_COCO          18 OpenPose-COCO keypoints from smplx's joint list (24 joints + extra vertices)
SMPL_TO_J14, H36M_TO_J14   the 14 LSP evaluation joints, from SMPL joints or the H36M regressor's 17
project               LGD's fixed camera: f = 256 at (0, 0, 6) looking down -z, y up, image v down
normalize_keypoints   bounding box of the confident joints -> [0, 1] on its longest side
random_rotations      LGD's augmentation: heading in [0, 360), tilt in [-20, 20] degrees about x and z
keep_mask             Bernoulli confidence dropout
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lsr1.hmr.rotations import euler_zyx_to_matrix

__all__ = [
    "COCO_JOINT_WEIGHTS",
    "COCO_NAMES",
    "H36M_TO_J14",
    "J14_NAMES",
    "SMPL_TO_COCO",
    "SMPL_TO_J14",
    "keep_mask",
    "normalize_keypoints",
    "project",
    "random_rotations",
]

COCO_NAMES = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
# indices into smplx's SMPL joints: 0-23 skeleton, 24 nose, 25 right eye, 26 left eye, 27 right ear, 28 left ear
SMPL_TO_COCO = (24, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28)
# LGD's joint weights in its meta-loss: 2 for shoulders and hips, 4 for elbows and knees, 8 for wrists and ankles
COCO_JOINT_WEIGHTS = (1.0, 1.0, 2.0, 4.0, 8.0, 2.0, 4.0, 8.0, 2.0, 4.0, 8.0, 2.0, 4.0, 8.0, 1.0, 1.0, 1.0, 1.0)

J14_NAMES = (
    "right_ankle",
    "right_knee",
    "right_hip",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_wrist",
    "right_elbow",
    "right_shoulder",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "neck",
    "head",
)
SMPL_TO_J14 = (8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20, 12, 15)  # "head" is SMPL's head joint (skull base)
H36M_TO_J14 = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)  # rows of the 17-joint H36M regressor (SPIN)


def project(points: Tensor, focal_length: float = 256.0, camera_distance: float = 6.0) -> Tensor:
    """Perspective projection of LGD's camera: u = f x / (d - z), v = -f y / (d - z).

    points: (..., 3) in metres, body at the origin -> (..., 2) in pixels around (0, 0).
    """
    depth = camera_distance - points[..., 2]
    return torch.stack([points[..., 0], -points[..., 1]], dim=-1) * (focal_length / depth).unsqueeze(-1)


def normalize_keypoints(keypoints: Tensor, confidence: Tensor, threshold: float = 0.01) -> Tensor:
    """LGD's `normalize_p2d`: (k - centre) / scale + 0.5 with the bounding box of the joints whose confidence
    is >= threshold (scale = its longer side); the other joints become 0.5.

    keypoints: (B, J, 2); confidence: (B, J). Unlike LGD, a box of one joint (scale 0) or of none gives 0.5
    everywhere instead of NaN.
    """
    mask = (confidence >= threshold).unsqueeze(-1)  # (B, J, 1)
    inf = torch.tensor(math.inf, dtype=keypoints.dtype, device=keypoints.device)
    low = torch.where(mask, keypoints, inf).amin(1)  # (B, 2)
    high = torch.where(mask, keypoints, -inf).amax(1)
    found = mask.any(1)  # (B, 1)
    scale = torch.where(found, high - low, torch.zeros_like(high)).amax(-1, keepdim=True)  # (B, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    centre = torch.where(found, 0.5 * (high + low), torch.zeros_like(high))
    normalized = (keypoints - centre.unsqueeze(1)) / scale.unsqueeze(1) + 0.5
    return torch.where(mask, normalized, torch.full_like(normalized, 0.5))


def random_rotations(count: int, generator: torch.Generator, max_tilt_deg: float = 20.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """LGD's RandomRotateSMPL: R = Rz Ry Rx with y ~ U[0, 2 pi) and x, z ~ U[-tilt, tilt]. Returns (count, 3, 3)."""
    tilt = math.radians(max_tilt_deg)
    u = torch.rand(count, 3, generator=generator, dtype=dtype)
    low = torch.tensor([-tilt, 0.0, -tilt], dtype=dtype)
    span = torch.tensor([2 * tilt, 2 * math.pi, 2 * tilt], dtype=dtype)
    return euler_zyx_to_matrix(low + span * u)


def keep_mask(count: int, joints: int, keep_probability: float, generator: torch.Generator) -> Tensor:
    """Synthetic confidences: each joint kept (1.0) with keep_probability, else dropped (0.0). (count, joints)."""
    return (torch.rand(count, joints, generator=generator, dtype=torch.float64) < keep_probability).to(torch.float64)
