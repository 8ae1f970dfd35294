"""The SMPL body (docs/design.md §4-5): loading a model folder into `smplx.SMPL`, and the joints-only forward.

    BodyModel      reads SMPL_<GENDER>.{npz,pkl} (real files through the restricted unpickler, cached as
                   .npz) and builds `smplx.SMPL(..., data_struct=...)`: smplx itself never unpickles
    JointModel     the few arrays the joints need: the joint regressor folded into the template and the shape
                   directions, and the skinning data of the handful of vertices that extra joints use
    forward_joints the 24 SMPL joints and those vertices, posed, without the 6890-vertex mesh; equal to
                   smplx's `SMPL(...).joints` (the first 45 outputs), several times faster

The joints-only forward is linear-blend skinning restricted to what the joints depend on: SMPL joints are
regressed from the *shaped* template (pose correctives do not move them), so J = J_regressor @ v_shaped
folds into a (24, 3) template and (24, 3, S) shape directions; the kinematic chain runs level by level
of the tree (9 levels instead of 23 sequential joints); only the selected vertices get pose correctives
and skinning.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import smplx
import torch
from smplx.utils import Struct
from torch import Tensor

from lsr1.hmr.formats import read_smpl

__all__ = [
    "EXTRA_JOINTS",
    "NUM_FACES",
    "NUM_JOINTS",
    "NUM_VERTICES",
    "SMPL_JOINT_NAMES",
    "SMPL_PARENTS",
    "BodyModel",
    "JointModel",
    "find_model_file",
    "forward_joints",
]

log = logging.getLogger(__name__)

NUM_VERTICES = 6890
NUM_FACES = 13776
NUM_JOINTS = 24
EXTRA_JOINTS = 21  # smplx's VertexJointSelector with its defaults: 5 face, 6 feet, 10 fingertips
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
SMPL_JOINT_NAMES = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hand",
    "right_hand",
)
GENDERS = ("neutral", "male", "female")


def find_model_file(model_path: str | Path, gender: str = "neutral") -> Path:
    """The SMPL file for `gender`: `model_path` itself, or in a smplx model folder `<dir>/smpl/` or `<dir>/`,
    `SMPL_<GENDER>.npz` (preferred) or `.pkl`."""
    if gender not in GENDERS:
        raise ValueError(f"gender must be one of {list(GENDERS)}, got {gender!r}")
    path = Path(model_path)
    if path.is_file():
        return path
    names = [f"SMPL_{gender.upper()}.{ext}" for ext in ("npz", "pkl")]
    tried = [folder / name for folder in (path / "smpl", path) for name in names]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no SMPL model for gender {gender!r} under {path}; tried {[str(t) for t in tried]}. "
        "See datasets/README.md (real files) or run `python -m lsr1.hmr.synthetic` (synthetic ones)."
    )


class JointModel(NamedTuple):
    """What the joints-only forward needs (float tensors in one dtype; E selected vertices)."""

    joint_template: Tensor  # (24, 3) J_regressor @ v_template
    joint_shapedirs: Tensor  # (24, 3, S) J_regressor @ shapedirs
    parents: Tensor  # (24,) long; the root points to itself
    levels: tuple[Tensor, ...]  # joints of each depth of the tree, root first
    level_parents: tuple[Tensor, ...]  # each joint's parent as a position in the previous level
    order: Tensor  # (24,) where each joint sits in the concatenation of the levels
    vertex_ids: Tensor  # (E,) long: smplx's 21 extra-joint vertices first, then any evaluation-regressor support
    vertex_template: Tensor  # (E, 3)
    vertex_shapedirs: Tensor  # (E, 3, S)
    vertex_posedirs: Tensor  # (207, 3 E)
    vertex_weights: Tensor  # (E, 24)
    eval_regressor: Tensor | None  # (14, E) evaluation joints from the posed selected vertices, if given

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> JointModel:
        """A copy with floating tensors cast to dtype and every tensor moved to device."""

        def move(value: object) -> object:
            if isinstance(value, Tensor):
                return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            if isinstance(value, tuple):
                return tuple(move(v) for v in value)
            return value

        return JointModel(*(move(v) for v in self))


class BodyModel:
    """An SMPL body from a file or a smplx model folder, as arrays, as `smplx.SMPL` and as a JointModel.

    model_path: `SMPL_<GENDER>.npz|pkl` or a folder holding it (smplx layout `<dir>/smpl/`).
    cache_dir: where a `.pkl` is cached as `.npz` after its first safe read (None: no cache, the pickle is
    read every time).
    """

    def __init__(self, model_path: str | Path, gender: str = "neutral", cache_dir: str | Path | None = None) -> None:
        self.path = find_model_file(model_path, gender)
        self.gender = gender
        self.arrays = read_smpl(self.path, cache_dir)
        self.num_betas = self.arrays["shapedirs"].shape[-1]
        # smplx prints a warning for every 10-beta model (all SMPL 1.0 files); keep stdout clean
        with contextlib.redirect_stdout(io.StringIO()):
            self.smpl = smplx.SMPL(
                str(self.path.parent),
                data_struct=Struct(**self.arrays),
                gender=gender,
                num_betas=self.num_betas,
                create_betas=False,
                create_global_orient=False,
                create_body_pose=False,
                create_transl=False,
            )
        self.extra_vertex_ids = self.smpl.vertex_joint_selector.extra_joints_idxs.numpy()
        if len(self.extra_vertex_ids) != EXTRA_JOINTS:
            raise RuntimeError(f"expected smplx to select {EXTRA_JOINTS} extra-joint vertices, got {len(self.extra_vertex_ids)}")
        log.info("SMPL body %s (%s, %d betas)", self.path, gender, self.num_betas)

    def joint_model(
        self,
        eval_regressor: np.ndarray | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> JointModel:
        """The JointModel of this body; eval_regressor (14, 6890) adds 14 evaluation joints regressed from
        the posed mesh (e.g. rows of the H36M regressor), computed from the vertices it touches only."""
        a = self.arrays
        regressor = a["J_regressor"]
        ids = [int(i) for i in self.extra_vertex_ids]
        if eval_regressor is not None:
            if eval_regressor.shape != (14, NUM_VERTICES):
                raise ValueError(f"eval_regressor must have shape (14, {NUM_VERTICES}), got {eval_regressor.shape}")
            extra = set(ids)
            ids += [int(i) for i in np.nonzero(np.abs(eval_regressor).sum(0))[0] if int(i) not in extra]
        ids_array = np.array(ids)
        parents = np.array([max(p, 0) for p in SMPL_PARENTS])
        depth = [0] * NUM_JOINTS
        for j in range(1, NUM_JOINTS):
            depth[j] = depth[SMPL_PARENTS[j]] + 1
        levels = [[j for j in range(NUM_JOINTS) if depth[j] == d] for d in range(max(depth) + 1)]
        level_parents = [[0]] + [[levels[d - 1].index(SMPL_PARENTS[j]) for j in levels[d]] for d in range(1, len(levels))]
        flat = [j for level in levels for j in level]
        posedirs = a["posedirs"][ids_array]  # (E, 3, 207)

        def tensor(x: np.ndarray, kind: torch.dtype = dtype) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=kind, device=device)

        return JointModel(
            joint_template=tensor(regressor @ a["v_template"]),
            joint_shapedirs=tensor(np.einsum("jv,vcs->jcs", regressor, a["shapedirs"])),
            parents=tensor(parents, torch.long),
            levels=tuple(tensor(np.array(level), torch.long) for level in levels),
            level_parents=tuple(tensor(np.array(p), torch.long) for p in level_parents),
            order=tensor(np.argsort(flat), torch.long),
            vertex_ids=tensor(ids_array, torch.long),
            vertex_template=tensor(a["v_template"][ids_array]),
            vertex_shapedirs=tensor(a["shapedirs"][ids_array]),
            vertex_posedirs=tensor(posedirs.reshape(-1, posedirs.shape[-1]).T),
            vertex_weights=tensor(a["weights"][ids_array]),
            eval_regressor=None if eval_regressor is None else tensor(eval_regressor[:, ids_array]),
        )


def forward_joints(model: JointModel, rotmats: Tensor, betas: Tensor) -> Tensor:
    """Posed joints: the 24 SMPL joints, then the E selected vertices (the first 21 are smplx's extra joints).

    rotmats: (B, 24, 3, 3) local joint rotations; betas: (B, S). Returns (B, 24 + E, 3); its first 45 rows
    equal `smplx.SMPL(...).joints`.
    """
    batch = rotmats.shape[0]
    joints = model.joint_template + torch.einsum("bs,jcs->bjc", betas, model.joint_shapedirs)  # (B, 24, 3)
    offsets = torch.cat([joints[:, :1], joints[:, 1:] - joints[:, model.parents[1:]]], dim=1)  # bone vectors
    # 1. kinematic chain, one tree level at a time: G_j = G_parent R_j, P_j = P_parent + G_parent offset_j
    rotations, positions = [], []
    for level, parent in zip(model.levels, model.level_parents):
        local = rotmats[:, level]
        if not rotations:
            rotations.append(local)
            positions.append(offsets[:, level])
            continue
        g_parent = rotations[-1][:, parent]
        rotations.append(g_parent @ local)
        positions.append(positions[-1][:, parent] + (g_parent @ offsets[:, level].unsqueeze(-1)).squeeze(-1))
    world = torch.cat(rotations, dim=1)[:, model.order]  # (B, 24, 3, 3)
    posed = torch.cat(positions, dim=1)[:, model.order]  # (B, 24, 3)
    # 2. the selected vertices: shape and pose correctives, then skinning with G_j (v - J_j) + P_j
    eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
    pose_feature = (rotmats[:, 1:] - eye).reshape(batch, -1)  # (B, 207)
    vertices = model.vertex_template + torch.einsum("bs,ecs->bec", betas, model.vertex_shapedirs)
    vertices = vertices + (pose_feature @ model.vertex_posedirs).reshape(batch, -1, 3)
    translation = posed - (world @ joints.unsqueeze(-1)).squeeze(-1)  # (B, 24, 3)
    blend = torch.einsum("ej,bjkl->bekl", model.vertex_weights, world)  # (B, E, 3, 3)
    skinned = (blend @ vertices.unsqueeze(-1)).squeeze(-1) + torch.einsum("ej,bjk->bek", model.vertex_weights, translation)
    return torch.cat([posed, skinned], dim=1)
