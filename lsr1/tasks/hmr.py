"""Human mesh recovery as an inner problem (paper Sec. 5.2, Eqs. 12-13; docs/design.md §4; notes/lgd-protocol.md).

x = Theta = [pose (72 axis-angle or 144 6D values), betas (10)] per problem. Given 18 normalised COCO
keypoints k and confidences w, the inner objective is Eq. 12 as LGD computes it,

    f(Theta) = mean_{joints, u/v} w |normalize(project(SMPL(Theta)), w) - k|,

with the gradient by autograd through the joints-only body forward. The meta-objective per iterate adds
Eq. 13's self-supervision with LGD's weights: l2d f + l3d mean(joint weight |X - X_gt|) (COCO joints, metres)
+ lpose mean|theta - theta_gt| + lshape mean|beta - beta_gt|; the secant term stays the learner's.

Problems come from AMASS frames (`amass_problem`: random global rotation, projection, confidence dropout)
or from 3DPW (`pw3d_problem`: OpenPose detections, valid frames, root in the camera frame), and
`hmr_problem_set` gives the seeded splits of an experiment: train = AMASS, val / test = 3DPW.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lsr1.config import HMRConfig, TaskConfig
from lsr1.hmr.body import BodyModel, JointModel, forward_joints
from lsr1.hmr.camera import (
    COCO_JOINT_WEIGHTS,
    H36M_TO_J14,
    SMPL_TO_COCO,
    SMPL_TO_J14,
    keep_mask,
    normalize_keypoints,
    project,
    random_rotations,
)
from lsr1.hmr.formats import FormatError, Pw3dSequence, in_fraction, load_amass_frames, read_3dpw_split
from lsr1.hmr.metrics import mpjpe, pa_mpjpe
from lsr1.hmr.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)
from lsr1.tasks.base import Problem, derive_seed, make_generator

__all__ = [
    "CONTEXT_DIM",
    "NUM_BETAS",
    "OPENCV_TO_LGD",
    "HMRProblem",
    "amass_problem",
    "encode_pose",
    "evaluation_joints",
    "hmr_problem_set",
    "load_joint_model",
    "pose_size",
    "pw3d_arrays",
    "pw3d_problem",
    "rest_theta",
]

log = logging.getLogger(__name__)

ROTATION_SIZE = {"axis_angle": 3, "6d": 6}
NUM_BETAS = 10
CONTEXT_DIM = 36  # the flattened 18 x 2 keypoints
# 3DPW's camera frame (OpenCV: y down, z away from the camera) -> LGD's (y up, camera on +z): 180 deg about x
OPENCV_TO_LGD = np.diag([1.0, -1.0, -1.0])


def pose_size(rotation: str) -> int:
    """Number of pose values in Theta: 72 (axis-angle) or 144 (6D)."""
    return 24 * ROTATION_SIZE[rotation]


def encode_pose(rotmats: Tensor, rotation: str) -> Tensor:
    """(B, 24, 3, 3) -> (B, 72) axis-angle or (B, 144) 6D."""
    encode = matrix_to_axis_angle if rotation == "axis_angle" else matrix_to_rotation_6d
    return encode(rotmats).flatten(1)


def _decode_pose(pose: Tensor, rotation: str) -> Tensor:
    """(B, 72 | 144) -> (B, 24, 3, 3)."""
    if rotation == "axis_angle":
        return axis_angle_to_matrix(pose.reshape(-1, 24, 3))
    return rotation_6d_to_matrix(pose.reshape(-1, 24, 6))


def evaluation_joints(model: JointModel, points: Tensor) -> Tensor:
    """The 14 LSP evaluation joints (B, 14, 3) from `forward_joints` output: the H36M regressor's when the
    model has one, else SMPL joints (SMPL_TO_J14)."""
    if model.eval_regressor is None:
        return points[:, list(SMPL_TO_J14)]
    return torch.einsum("ke,bec->bkc", model.eval_regressor, points[:, 24:])


def _mid_hips(joints14: Tensor) -> Tensor:
    return 0.5 * (joints14[:, 2:3] + joints14[:, 3:4])


class HMRProblem(Problem):
    """A batch of B HMR fits: observed keypoints, ground truth, and the body and loss settings.

    keypoints (B, 18, 2): normalised COCO keypoints (0.5 where confidence < threshold); confidence (B, 18);
    target (B, N): Theta_gt; joints_gt (B, 18, 3): COCO joints of Theta_gt (metres, no translation);
    joints24_gt (B, 24, 3): SMPL joints to evaluate against (3DPW's jointPositions; any frame, PA aligns);
    eval_gt (B, 14, 3): evaluation joints of Theta_gt. x0 is the rest pose with mean shape.
    """

    def __init__(
        self,
        keypoints: Tensor,
        confidence: Tensor,
        target: Tensor,
        joints_gt: Tensor,
        joints24_gt: Tensor,
        eval_gt: Tensor,
        model: JointModel,
        config: HMRConfig,
    ) -> None:
        batch = keypoints.shape[0]
        expected = {
            "keypoints": (batch, 18, 2),
            "confidence": (batch, 18),
            "target": (batch, pose_size(config.rotation) + NUM_BETAS),
            "joints_gt": (batch, 18, 3),
            "joints24_gt": (batch, 24, 3),
            "eval_gt": (batch, 14, 3),
        }
        given = dict(
            keypoints=keypoints, confidence=confidence, target=target, joints_gt=joints_gt, joints24_gt=joints24_gt, eval_gt=eval_gt
        )
        for name, shape in expected.items():
            if tuple(given[name].shape) != shape:
                raise ValueError(f"HMRProblem: {name} must have shape {shape}, got {tuple(given[name].shape)}")
        super().__init__(rest_theta(config.rotation, target.dtype, target.device).expand(batch, -1).clone())
        self.keypoints, self.confidence, self.target = keypoints, confidence, target
        self.joints_gt, self.joints24_gt, self.eval_gt = joints_gt, joints24_gt, eval_gt
        self.model, self.config = model, config

    @property
    def context(self) -> Tensor:
        """What a learned optimizer may condition on: the flattened keypoints (B, 36), as LGD's networks see them."""
        return self.keypoints.flatten(1)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pose = pose_size(self.config.rotation)
        return x[:, :pose], x[:, pose:]

    def points(self, x: Tensor) -> Tensor:
        """Posed joints and selected vertices of Theta = x (B, N): (B, 24 + E, 3), see `forward_joints`."""
        pose, betas = self._split(x)
        return forward_joints(self.model, _decode_pose(pose, self.config.rotation), betas)

    def _predicted_keypoints(self, points: Tensor) -> Tensor:
        """The COCO joints of `points` projected and normalised with the observed confidences (B, 18, 2)."""
        c = self.config
        pixels = project(points[:, list(SMPL_TO_COCO)], c.focal_length, c.camera_distance)
        return normalize_keypoints(pixels, self.confidence, c.confidence_threshold)

    def _reprojection(self, points: Tensor) -> Tensor:
        predicted = self._predicted_keypoints(points)
        return (self.confidence.unsqueeze(-1) * (predicted - self.keypoints).abs()).mean((1, 2))

    def value(self, x: Tensor) -> Tensor:
        """Eq. 12: the confidence-weighted L1 reprojection error (B,), times hmr.inner_loss_weight."""
        return self.config.inner_loss_weight * self._reprojection(self.points(x))

    def grad(self, x: Tensor) -> Tensor:
        """By autograd; differentiable itself (create_graph) only when x is in a graph (second order)."""
        with torch.enable_grad():
            leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.value(leaf).sum(), leaf, create_graph=x.requires_grad)
        return g

    def meta_objective(self, x: Tensor, value: Tensor, initial: bool = False) -> Tensor:
        """Eq. 13 per iterate with LGD's terms: l2d f + l3d wL1(COCO joints) + lpose L1(theta) + lshape L1(beta),
        f without inner_loss_weight. hmr.meta_loss "official": the authors' terms, the 2D one joint-weighted
        instead of confidence-weighted, and both joint terms on the initial iterate alone."""
        c = self.config
        pose, betas = self._split(x)
        pose_gt, betas_gt = self._split(self.target)
        pose_term, shape_term = c.loss_pose * (pose - pose_gt).abs().mean(1), c.loss_shape * (betas - betas_gt).abs().mean(1)
        if c.meta_loss == "official" and not initial:
            return pose_term + shape_term
        points = self.points(x)
        weights = torch.tensor(COCO_JOINT_WEIGHTS, dtype=x.dtype, device=x.device).unsqueeze(-1)
        joint_term = (weights * (points[:, list(SMPL_TO_COCO)] - self.joints_gt).abs()).mean((1, 2))
        if c.meta_loss == "official":  # their normalised keypoints against the observed, joint-weighted
            term_2d = (weights * (self._predicted_keypoints(points) - self.keypoints).abs()).mean((1, 2))
        else:
            term_2d = value / c.inner_loss_weight
        return c.loss_2d * term_2d + c.loss_3d * joint_term + pose_term + shape_term

    def evaluation_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """Per problem (B,): pa_mpjpe (mm, 24 SMPL joints vs joints24_gt: LGD's selection metric), the 14
        evaluation joints' PA-MPJPE and mid-hip-aligned MPJPE (keys name the joints' source, `h36m` or `smpl`),
        and the reprojection error f."""
        with torch.no_grad():
            points = self.points(x)
            joints14 = evaluation_joints(self.model, points)
            source = "smpl" if self.model.eval_regressor is None else "h36m"
            return {
                "pa_mpjpe": pa_mpjpe(points[:, :24], self.joints24_gt),
                f"pa_mpjpe14_{source}": pa_mpjpe(joints14, self.eval_gt),
                f"mpjpe14_{source}": mpjpe(joints14 - _mid_hips(joints14), self.eval_gt - _mid_hips(self.eval_gt)),
                "reprojection": self._reprojection(points),
            }

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> HMRProblem:
        clone = super().to(device, dtype)
        clone.model = self.model.to(device, dtype)
        return clone

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The batch as numpy arrays (what a Ray Data `map_batches` returns); `from_arrays` inverts it."""
        return {name: getattr(self, name).detach().cpu().numpy() for name in _ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], model: JointModel, config: HMRConfig) -> HMRProblem:
        """Rebuild a problem from `to_arrays` output (or a batch of rows with those columns), in model's dtype."""
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise KeyError(f"HMRProblem.from_arrays: missing {missing}; expected {list(_ARRAYS)}")
        dtype, device = model.joint_template.dtype, model.joint_template.device
        # a copy: Ray Data hands out read-only views of its blocks
        tensors = {name: torch.tensor(np.asarray(arrays[name]), dtype=dtype, device=device) for name in _ARRAYS}
        return cls(**tensors, model=model, config=config)


_ARRAYS = ("keypoints", "confidence", "target", "joints_gt", "joints24_gt", "eval_gt")


def rest_theta(rotation: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """Theta of the rest pose (identity rotations) with mean shape, (N,)."""
    eye = torch.eye(3, dtype=dtype, device=device).expand(1, 24, 3, 3)
    return torch.cat([encode_pose(eye, rotation), torch.zeros(1, NUM_BETAS, dtype=dtype, device=device)], dim=1)[0]


def _from_poses(
    rotmats: Tensor, betas: Tensor, keypoints: Tensor, confidence: Tensor, joints24_gt: Tensor | None, model: JointModel, config: HMRConfig
) -> HMRProblem:
    """Ground truth from rotations (B, 24, 3, 3) and betas (B, 10) in LGD's frame; keypoints already normalised."""
    points = forward_joints(model, rotmats, betas)
    return HMRProblem(
        keypoints=keypoints,
        confidence=confidence,
        target=torch.cat([encode_pose(rotmats, config.rotation), betas], dim=1),
        joints_gt=points[:, list(SMPL_TO_COCO)],
        joints24_gt=points[:, :24] if joints24_gt is None else joints24_gt,
        eval_gt=evaluation_joints(model, points),
        model=model,
        config=config,
    )


def _rows(column: np.ndarray | Tensor, width: int) -> np.ndarray:
    """A (B, width) float64 array from a column given as a 2D array or as B arrays (Arrow list columns)."""
    array = column.detach().cpu().numpy() if isinstance(column, Tensor) else np.asarray(column)
    if array.dtype == object:
        array = np.stack([np.asarray(row) for row in array])
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"expected a column of {width} values per frame, got shape {array.shape}")
    return array.astype(np.float64)


def amass_problem(frames: Mapping[str, np.ndarray | Tensor], model: JointModel, config: HMRConfig, seed: int) -> HMRProblem:
    """A training batch from AMASS frames, as LGD makes one (seeded, Ray-free: call it in `map_batches`).

    frames: pose72 (B, 72) Y-up axis-angle (as `lsr1.hmr.formats.amass_frames` prepares them) and betas10
    (B, 10). Each frame gets a random global rotation (heading 0-360 deg, tilt +-max_tilt_deg), its COCO
    joints are projected with LGD's camera, each joint is kept with keep_probability (confidence 1, else 0),
    kept joints get Gaussian noise of keypoint_noise (normalised units), and the keypoints are normalised.
    """
    dtype, device = model.joint_template.dtype, model.joint_template.device
    pose = torch.as_tensor(_rows(frames["pose72"], 72)).reshape(-1, 24, 3)
    betas = torch.as_tensor(_rows(frames["betas10"], NUM_BETAS), dtype=dtype, device=device)
    generator = make_generator(seed)
    batch = pose.shape[0]
    rotmats = axis_angle_to_matrix(pose)
    root = random_rotations(batch, generator, config.max_tilt_deg) @ rotmats[:, 0]
    rotmats = torch.cat([root.unsqueeze(1), rotmats[:, 1:]], dim=1).to(dtype=dtype, device=device)
    confidence = keep_mask(batch, 18, config.keep_probability, generator).to(dtype=dtype, device=device)
    noise = config.keypoint_noise * torch.randn(batch, 18, 2, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    points = forward_joints(model, rotmats, betas)
    pixels = project(points[:, list(SMPL_TO_COCO)], config.focal_length, config.camera_distance)
    keypoints = normalize_keypoints(pixels, confidence, config.confidence_threshold)
    keypoints = torch.where(confidence.unsqueeze(-1) > 0, keypoints + noise, keypoints)
    return _from_poses(rotmats, betas, keypoints, confidence, None, model, config)


def pw3d_arrays(sequences: list[Pw3dSequence], skip: int = 1) -> dict[str, np.ndarray]:
    """Every valid frame (campose_valid) of every person, LGD's preprocessing, then every skip-th row:
    pose72 (root rotated into the camera frame, then OpenCV -> LGD axes), betas10, keypoints (pixels) and
    confidence from poses2d, joints24 (jointPositions, metres)."""
    rows: dict[str, list[np.ndarray]] = {"pose72": [], "betas10": [], "keypoints": [], "confidence": [], "joints24": []}
    for sequence in sequences:
        for person in range(len(sequence.poses)):
            valid = sequence.campose_valid[person]
            pose = sequence.poses[person][valid].copy()
            camera = sequence.cam_poses[valid][:, :3, :3]
            root = axis_angle_to_matrix(torch.from_numpy(pose[:, :3]))
            pose[:, :3] = matrix_to_axis_angle(torch.from_numpy(OPENCV_TO_LGD @ camera) @ root).numpy()
            detections = sequence.poses2d[person][valid].transpose(0, 2, 1)  # (T, 18, 3)
            rows["pose72"].append(pose)
            rows["betas10"].append(np.tile(sequence.betas[person][:10], (len(pose), 1)))
            rows["keypoints"].append(detections[..., :2])
            rows["confidence"].append(detections[..., 2])
            rows["joints24"].append(sequence.joint_positions[person][valid].reshape(-1, 24, 3))
    return {key: np.concatenate(value)[::skip] for key, value in rows.items()}


def pw3d_problem(arrays: Mapping[str, np.ndarray], model: JointModel, config: HMRConfig) -> HMRProblem:
    """An evaluation batch from `pw3d_arrays`: keypoints normalised with the OpenPose confidences and the
    threshold, confidences then binarised (LGD's validation_step)."""
    dtype, device = model.joint_template.dtype, model.joint_template.device

    def tensor(key: str) -> Tensor:
        return torch.as_tensor(np.asarray(arrays[key]), dtype=dtype, device=device)

    raw = tensor("confidence")
    keypoints = normalize_keypoints(tensor("keypoints"), raw, config.confidence_threshold)
    confidence = (raw >= config.confidence_threshold).to(dtype)
    rotmats = axis_angle_to_matrix(tensor("pose72").reshape(-1, 24, 3))
    return _from_poses(rotmats, tensor("betas10"), keypoints, confidence, tensor("joints24"), model, config)


# ---------------------------------------------------------------------------------------------------------
# the splits of an experiment (cached: the body, the AMASS frames)


@functools.lru_cache(maxsize=4)
def _body(body_dir: str, gender: str, cache_dir: str) -> BodyModel:
    return BodyModel(body_dir, gender, cache_dir)


@functools.lru_cache(maxsize=2)
def _frames(amass_dir: str, fraction: float) -> dict[str, np.ndarray]:
    """The AMASS frames under amass_dir that data fraction `fraction` keeps (`in_fraction`)."""
    frames = load_amass_frames(amass_dir)
    if fraction < 1.0:
        keep = in_fraction(frames["files"][frames["source"]], frames["frame"], fraction)
        if not keep.any():
            raise ValueError(f"hmr.data_fraction {fraction} keeps none of the {len(keep)} AMASS frames in {amass_dir}")
        frames = {key: value if key == "files" else value[keep] for key, value in frames.items()}
    return frames


def load_joint_model(config: HMRConfig, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> JointModel:
    """The JointModel of the configured body, with the H36M evaluation regressor when config names one."""
    return _joint_model(config.body_dir, config.gender, config.cache_dir, config.h36m_regressor, dtype, str(device))


@functools.lru_cache(maxsize=8)
def _joint_model(body_dir: str, gender: str, cache_dir: str, h36m: str | None, dtype: torch.dtype, device: str) -> JointModel:
    body = _body(body_dir, gender, cache_dir)
    regressor = None
    if h36m is not None:
        path = Path(h36m)
        try:
            full = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise FormatError(f"{path}: not a readable .npy H36M regressor ({err})") from None
        if full.shape != (17, body.arrays["v_template"].shape[0]):
            raise FormatError(f"{path}: expected the H36M regressor's shape (17, 6890), got {full.shape}")
        regressor = full[list(H36M_TO_J14)]
    log.info("evaluation joints: %s", f"H36M regressor {h36m}" if regressor is not None else "SMPL joints")
    return body.joint_model(regressor, dtype=dtype, device=device)


def hmr_problem_set(
    task: TaskConfig, config: HMRConfig, split: str, index: int = 0, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> HMRProblem:
    """train: batch `index` of task.batch_size AMASS frames (seeded by task.seed and index) out of the
    config.data_fraction that `in_fraction` keeps; val: the 3DPW validation split (every
    config.val_skip-th frame); test: the whole 3DPW test split."""
    model = load_joint_model(config, dtype, device)
    if split == "train":
        frames = _frames(config.amass_dir, config.data_fraction)
        rng = np.random.default_rng(derive_seed(task.seed, "train", index))
        count = len(frames["pose72"])
        rows = rng.choice(count, task.batch_size, replace=count < task.batch_size)
        batch = {key: frames[key][rows] for key in ("pose72", "betas10")}
        return amass_problem(batch, model, config, derive_seed(task.seed, "observe", index))
    if split in ("val", "test"):
        name, skip = ("validation", config.val_skip) if split == "val" else ("test", 1)
        return pw3d_problem(pw3d_arrays(read_3dpw_split(config.pw3d_dir, name), skip), model, config)
    raise ValueError(f"split must be one of ['train', 'val', 'test'], got {split!r}")
