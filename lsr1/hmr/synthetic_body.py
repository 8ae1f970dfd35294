"""A procedurally built human body in SMPL's exact format, for machines without the licensed SMPL files.

The mesh is a mannequin of 24 overlapping elliptic capsules, one per SMPL joint (the part that joint moves,
from the joint to its child), joined into one closed genus-0 surface by small hidden tubes, so it has
SMPL's 6890 vertices and 2 * 6890 - 4 = 13776 faces. The other arrays follow SMPL's meaning:

    J_regressor  (24, 6890)  joint j = mean of the capsule ring that sits exactly on joint j
    weights      (6890, 24)  skinning: a soft-min over the distances to the part's own, parent and child bones
    shapedirs    (6890, 3, 10)  linear shape fields: height, girth, leg / arm length, shoulder and hip
                             width, torso length, head size, chest depth, limb girth
    posedirs     (6890, 3, 207)  pose correctives: bending joint j bulges the surface around it
    kintree_table (2, 24), f (13776, 3)

and the vertices smplx reads as extra joints (nose 332, eyes, ears, toes, heels, fingertips) are placed at
those anatomical spots, so smplx's default vertex ids work unchanged. `write_synthetic_body` saves it as
`<dir>/smpl/SMPL_NEUTRAL.npz`, smplx's model-folder layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS

from lsr1.hmr.body import NUM_FACES, NUM_VERTICES, SMPL_PARENTS
from lsr1.hmr.formats import atomic_output

__all__ = ["REST_JOINTS", "synthetic_body", "write_synthetic_body"]

log = logging.getLogger(__name__)

# Rest (T-pose) joint locations in metres, SMPL's frame: y up, +x the body's left, +z forward.
REST_JOINTS = np.array(
    [
        [0.000, -0.223, 0.028],
        [0.068, -0.313, 0.015],
        [-0.068, -0.313, 0.015],
        [0.000, -0.112, -0.010],  # pelvis, hips, spine1
        [0.105, -0.690, 0.010],
        [-0.105, -0.690, 0.010],
        [0.000, 0.025, 0.002],  # knees, spine2
        [0.088, -1.090, -0.030],
        [-0.088, -1.090, -0.030],
        [0.000, 0.080, 0.025],  # ankles, spine3
        [0.115, -1.150, 0.095],
        [-0.115, -1.150, 0.095],
        [0.000, 0.290, -0.015],  # feet (balls), neck
        [0.080, 0.195, 0.005],
        [-0.080, 0.195, 0.005],
        [0.000, 0.355, 0.035],  # collars, head
        [0.175, 0.225, -0.010],
        [-0.175, 0.225, -0.010],
        [0.435, 0.210, -0.030],
        [-0.435, 0.210, -0.030],  # shoulders, elbows
        [0.690, 0.215, -0.010],
        [-0.690, 0.215, -0.010],
        [0.775, 0.205, -0.020],
        [-0.775, 0.205, -0.020],  # wrists, hands
    ]
)


@dataclass(frozen=True)
class _Part:
    """The capsule of joint `joint`: axis from the joint to `end`, elliptic section with semi-axis
    `r_ref` along `ref` (made perpendicular to the axis) and `r_side` across, caps of length `cap`."""

    joint: int
    end: tuple[float, float, float]
    r_ref: float
    r_side: float
    cap: float
    ref: tuple[float, float, float] = (0.0, 0.0, 1.0)


def _mirror(x: float, y: float, z: float, left: bool) -> tuple[float, float, float]:
    return (x if left else -x, y, z)


def _parts() -> list[_Part]:
    j = REST_JOINTS
    head_top = (0.0, 0.47, 0.03)
    parts = [
        _Part(0, tuple(j[3]), 0.11, 0.16, 0.10),  # pelvis: hips and buttocks
        _Part(3, tuple(j[6]), 0.10, 0.14, 0.08),
        _Part(6, tuple(j[9]), 0.10, 0.15, 0.08),
        _Part(9, tuple(j[12]), 0.11, 0.16, 0.09),  # chest
        _Part(12, tuple(j[15]), 0.055, 0.055, 0.05),
        _Part(15, head_top, 0.095, 0.08, 0.085),  # head: deeper than wide
    ]
    for left in (True, False):
        side = 0 if left else 1
        parts += [
            _Part(13 + side, tuple(j[16 + side]), 0.055, 0.06, 0.05),  # collar
            _Part(16 + side, tuple(j[18 + side]), 0.05, 0.05, 0.045),  # upper arm
            _Part(18 + side, tuple(j[20 + side]), 0.04, 0.04, 0.035),  # forearm
            _Part(20 + side, tuple(j[22 + side]), 0.045, 0.018, 0.02),  # palm: wide along z, thin along y
            _Part(22 + side, _mirror(0.875, 0.205, -0.02, left), 0.042, 0.015, 0.02),  # fingers
            _Part(1 + side, tuple(j[4 + side]), 0.075, 0.075, 0.06),  # thigh
            _Part(4 + side, tuple(j[7 + side]), 0.05, 0.05, 0.045),  # shin
            _Part(7 + side, tuple(j[10 + side]), 0.035, 0.04, 0.045, ref=(0.0, 1.0, 0.0)),  # foot: heel to ball
            _Part(10 + side, _mirror(0.12, -1.16, 0.19, left), 0.02, 0.04, 0.02, ref=(0.0, 1.0, 0.0)),  # toes
        ]
    return sorted(parts, key=lambda p: p.joint)


# Where smplx's extra-joint vertices go: (name, part joint, target point). The closest vertex of that
# part to the target takes smplx's id for the name.
def _landmarks() -> list[tuple[str, int, tuple[float, float, float]]]:
    marks = [
        ("nose", 15, (0.0, 0.40, 0.14)),
        ("reye", 15, (-0.032, 0.44, 0.12)),
        ("leye", 15, (0.032, 0.44, 0.12)),
        ("rear", 15, (-0.09, 0.42, 0.02)),
        ("lear", 15, (0.09, 0.42, 0.02)),
    ]
    for side, s in (("L", True), ("R", False)):
        toes, foot = (10, 7) if s else (11, 8)
        marks += [
            (f"{side}BigToe", toes, _mirror(0.10, -1.16, 0.21, s)),
            (f"{side}SmallToe", toes, _mirror(0.15, -1.16, 0.19, s)),
            (f"{side}Heel", foot, _mirror(0.088, -1.15, -0.08, s)),
        ]
    for side, s in (("l", True), ("r", False)):
        hand, fingers = (20, 22) if s else (21, 23)
        marks += [(f"{side}thumb", hand, _mirror(0.74, 0.205, 0.07, s))]
        marks += [
            (f"{side}{name}", fingers, _mirror(0.895, 0.205, z, s))
            for name, z in (("index", 0.01), ("middle", -0.01), ("ring", -0.03), ("pinky", -0.05))
        ]
    return marks


def _capsule(part: _Part, edge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Vertices (V, 3), outward faces (F, 3), ring index per vertex (-1 at the poles), the ring on the joint
    and the number of segments per ring.

    Rings run from the joint-side pole to the far pole; the ring at the joint is the cylinder's first.
    """
    a, b = REST_JOINTS[part.joint], np.array(part.end)
    axis = b - a
    length = float(np.linalg.norm(axis))
    u = axis / length
    ref = np.array(part.ref) - np.dot(part.ref, u) * u
    d = ref / np.linalg.norm(ref)
    w = np.cross(u, d)
    segments = max(8, int(round(np.pi * (part.r_ref + part.r_side) / edge)))
    cap_rings = max(2, int(round(0.5 * np.pi * part.cap / edge)))
    cyl_rings = max(1, int(round(length / edge)))
    # (offset along the axis from a, radius factor) per ring
    lat = np.linspace(-0.5 * np.pi, 0.0, cap_rings + 1)[1:]
    profile = [(part.cap * np.sin(t), np.cos(t)) for t in lat]  # joint-side cap, ends on the joint ring
    profile += [(length * k / cyl_rings, 1.0) for k in range(1, cyl_rings + 1)]  # cylinder, ends on b
    profile += [(length + part.cap * np.sin(t), np.cos(t)) for t in -lat[::-1][1:]]  # far cap
    alpha = 2 * np.pi * np.arange(segments) / segments
    section = np.cos(alpha)[:, None] * part.r_ref * d + np.sin(alpha)[:, None] * part.r_side * w  # (S, 3)
    rings = np.stack([a + t * u + r * section for t, r in profile])  # (R, S, 3)
    n_rings = len(profile)
    verts = np.concatenate([rings.reshape(-1, 3), [a - part.cap * u, b + part.cap * u]])
    ring_of = np.concatenate([np.repeat(np.arange(n_rings), segments), [-1, -1]])
    idx = np.arange(n_rings * segments).reshape(n_rings, segments)
    nxt = np.roll(idx, -1, axis=1)
    quads_lo, quads_lo_next, quads_hi, quads_hi_next = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    faces = [
        np.stack([quads_lo, quads_lo_next, quads_hi_next], -1).reshape(-1, 3),
        np.stack([quads_lo, quads_hi_next, quads_hi], -1).reshape(-1, 3),
        np.stack([np.full(segments, len(verts) - 2), nxt[0], idx[0]], -1),  # joint-side pole fan
        np.stack([np.full(segments, len(verts) - 1), idx[-1], nxt[-1]], -1),  # far pole fan
    ]
    return verts, np.concatenate(faces), ring_of, cap_rings - 1, segments


def _split_edges(verts: np.ndarray, faces: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a midpoint into each edge (a, b) of a closed mesh: +1 vertex and +2 faces each, F = 2V - 4 kept."""
    verts, faces = list(verts), faces.copy()
    extra = []
    for a, b in edges:
        m = len(verts)
        verts.append(0.5 * (verts[a] + verts[b]))
        for f in np.nonzero((faces == a).any(1) & (faces == b).any(1))[0]:
            tri = list(faces[f])
            i = tri.index(a)
            if tri[(i + 1) % 3] == b:  # a -> b in this face: (a, m, c) and (m, b, c)
                c = tri[(i + 2) % 3]
                faces[f] = (a, m, c)
                extra.append((m, b, c))
            else:  # b -> a: (b, m, c) and (m, a, c)
                c = tri[(i + 1) % 3]
                faces[f] = (b, m, c)
                extra.append((m, a, c))
    return np.array(verts), np.concatenate([faces, np.array(extra, dtype=faces.dtype).reshape(-1, 3)])


def _bridge(hole_a: np.ndarray, hole_b: np.ndarray) -> np.ndarray:
    """Six faces joining two removed triangles (each in its own outward order) into one closed surface."""
    match = [hole_b[(1 - i) % 3] for i in range(3)]  # a_i meets b_(1-i): opposite orientation
    faces = []
    for i in range(3):
        a0, a1, b0, b1 = hole_a[i], hole_a[(i + 1) % 3], match[(i + 1) % 3], match[i]
        faces += [(a0, a1, b0), (a0, b0, b1)]
    return np.array(faces)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=-1)


def _ramp(t: np.ndarray) -> np.ndarray:
    return np.clip(t, 0.0, 1.0)


def _shape_directions(v: np.ndarray, radial: np.ndarray, part_of: np.ndarray) -> np.ndarray:
    """(V, 3, 10) displacement per unit beta; smooth functions of the rest position, so that every part
    (and every joint ring) moves consistently. `radial`: outward offsets from each vertex's own bone axis."""
    j = REST_JOINTS
    x, y, z = v.T
    out = np.zeros((len(v), 3, 10))
    out[:, :, 0] = 0.035 * (v - j[0])  # overall size: height
    limb = np.isin(part_of, [1, 2, 4, 5, 16, 17, 18, 19])
    torso = np.isin(part_of, [0, 3, 6, 9])
    out[:, :, 1] = 0.12 * radial * np.where(torso, 1.5, 1.0)[:, None]  # girth
    out[:, 1, 2] = -0.06 * _ramp((j[1, 1] - y) / (j[1, 1] - j[7, 1]))  # leg length
    out[:, 0, 3] = 0.05 * np.sign(x) * _ramp((np.abs(x) - j[16, 0]) / (j[22, 0] - j[16, 0]))  # arm length
    out[:, 0, 4] = 0.025 * np.sign(x) * _ramp((np.abs(x) - 0.04) / (j[16, 0] - 0.04)) * _ramp((y - j[6, 1]) / 0.1)  # shoulders
    out[:, 1, 5] = 0.04 * _ramp((y - j[0, 1]) / (j[12, 1] - j[0, 1]))  # torso length
    hips = _ramp((j[6, 1] - y) / (j[6, 1] - j[0, 1]))
    out[:, 0, 6] = 0.03 * np.clip(x / j[1, 0], -1.0, 1.0) * hips  # hip width
    out[:, :, 7] = 0.08 * (v - np.array([0.0, 0.42, 0.03])) * _ramp((y - j[12, 1]) / (j[15, 1] - j[12, 1]))[:, None]  # head
    out[:, 2, 8] = 0.15 * (z - 0.01) * torso  # chest depth
    out[:, :, 9] = 0.15 * radial * limb[:, None]  # limb girth
    return out


def _assemble(parts: list[_Part], edge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """All capsules as one vertex and face list with exactly 6890 vertices; the part of each vertex and the
    vertex ids of the ring on each joint."""
    while True:  # the finest resolution that still fits in 6890 vertices; edge splits make up the rest
        meshes = [_capsule(p, edge) for p in parts]
        if sum(len(m[0]) for m in meshes) <= NUM_VERTICES:
            break
        edge *= 1.01
    verts, faces, part_of, joint_ring, start = [], [], [], {}, 0
    for p, (v, f, ring, on_joint, _) in zip(parts, meshes):
        verts.append(v)
        faces.append(f + start)
        part_of.append(np.full(len(v), p.joint))
        joint_ring[p.joint] = start + np.nonzero(ring == on_joint)[0]
        start += len(v)
    verts, faces, part_of = map(np.concatenate, (verts, faces, part_of))

    # split axial edges of the chest's cylinder, spread over its rows (its rings stay intact)
    chest = [p.joint for p in parts].index(9)
    chest_start = int(np.nonzero(part_of == 9)[0][0])
    _, _, chest_rings, on_joint, segments = meshes[chest]
    rows = range(on_joint, int(chest_rings.max()))
    missing = NUM_VERTICES - len(verts)
    if missing > len(rows) * (segments // 3):
        raise RuntimeError(f"cannot place {missing} extra vertices on the chest")
    edges = []
    for k in range(missing):
        row, segment = rows[k % len(rows)], 3 * (k // len(rows))
        edges.append((row * segments + segment, (row + 1) * segments + segment))
    verts, faces = _split_edges(verts, faces, chest_start + np.array(edges, dtype=np.int64).reshape(-1, 2))
    return verts, faces, np.concatenate([part_of, np.full(missing, 9)]), joint_ring


def _join(verts: np.ndarray, faces: np.ndarray, part_of: np.ndarray) -> np.ndarray:
    """One surface: a hidden tube from each part to its parent's part, between their faces nearest the joint."""
    used: set[int] = set()
    removed, tubes = [], []
    centroids = verts[faces].mean(1)
    owner_of_face = part_of[faces[:, 0]]
    for joint in range(1, 24):
        chosen = []
        for owner in (joint, SMPL_PARENTS[joint]):
            candidates = np.array([c for c in np.nonzero(owner_of_face == owner)[0] if c not in used])
            best = int(candidates[np.argmin(np.linalg.norm(centroids[candidates] - REST_JOINTS[joint], axis=1))])
            used.add(best)
            chosen.append(best)
        removed += chosen
        tubes.append(_bridge(faces[chosen[0]], faces[chosen[1]]))
    keep = np.ones(len(faces), dtype=bool)
    keep[removed] = False
    return np.concatenate([faces[keep], *tubes])


def _skinning(verts: np.ndarray, part_of: np.ndarray, bones: np.ndarray) -> np.ndarray:
    """(V, 24) weights: a soft-min over the distances to the bones of the vertex's joint, its parent and its
    children (bones: (24, 2, 3) start and end of each part's axis), so that joints blend smoothly."""
    children = {j: [c for c in range(24) if SMPL_PARENTS[c] == j] for j in range(24)}
    weights = np.zeros((len(verts), 24))
    for joint in range(24):
        mask = part_of == joint
        family = [joint] + ([SMPL_PARENTS[joint]] if joint else []) + children[joint]
        dist = np.stack([_segment_distance(verts[mask], *bones[c]) for c in family], 1)
        soft = np.exp(-(dist - dist.min(1, keepdims=True)) / 0.015)
        soft = np.where(soft < 0.01, 0.0, soft)
        weights[np.ix_(mask, family)] = soft / soft.sum(1, keepdims=True)
    return weights


def _pose_correctives(verts: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(V, 3, 207): bending joint j by angle a bulges the surface near j outward by 0.02 (1 - cos a)."""
    posedirs = np.zeros((len(verts), 3, 207))
    for joint in range(1, 24):
        near = np.exp(-np.sum((verts - REST_JOINTS[joint]) ** 2, 1) / 0.07**2)
        for k in (0, 4, 8):  # the diagonal of R_j - I sums to -2 (1 - cos a)
            posedirs[:, :, 9 * (joint - 1) + k] = -0.01 * near[:, None] * normals
    return posedirs


def synthetic_body(edge: float = 0.02) -> dict[str, np.ndarray]:
    """The SMPL arrays (float64 except f and kintree_table) of the synthetic mannequin; `edge` ~ mesh resolution."""
    parts = _parts()  # sorted by joint: part j is joint j's
    verts, faces, part_of, joint_ring = _assemble(parts, edge)
    faces = _join(verts, faces, part_of)
    bones = np.stack([REST_JOINTS, np.array([p.end for p in parts])], 1)  # (24, 2, 3)
    start, axis = bones[part_of, 0], bones[part_of, 1] - bones[part_of, 0]
    along = ((verts - start) * axis).sum(1) / (axis * axis).sum(1)
    radial = verts - (start + along[:, None] * axis)  # perpendicular to the own bone, also on the caps
    regressor = np.zeros((24, len(verts)))
    for joint, ring in joint_ring.items():
        regressor[joint, ring] = 1.0 / len(ring)
    arrays = {
        "v_template": verts,
        "f": faces,
        "J_regressor": regressor,
        "weights": _skinning(verts, part_of, bones),
        "shapedirs": _shape_directions(verts, radial, part_of),
        "posedirs": _pose_correctives(verts, radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)),
    }
    arrays = _place_landmarks(arrays, part_of)
    arrays["kintree_table"] = np.array([[4294967295] + list(SMPL_PARENTS[1:]), list(range(24))], dtype=np.int64)
    arrays["f"] = arrays["f"].astype(np.uint32)
    if len(arrays["v_template"]) != NUM_VERTICES or len(arrays["f"]) != NUM_FACES:
        raise RuntimeError(f"synthetic body has {len(arrays['v_template'])} vertices and {len(arrays['f'])} faces")
    return arrays


def _place_landmarks(arrays: dict[str, np.ndarray], part_of: np.ndarray) -> dict[str, np.ndarray]:
    """Renumber the vertices so that smplx's extra-joint ids land on the matching anatomical spots."""
    verts = arrays["v_template"]
    ids = SMPLX_VERTEX_IDS["smplh"]
    wanted: dict[int, int] = {}
    for name, joint, target in _landmarks():
        candidates = np.nonzero(part_of == joint)[0]
        candidates = candidates[[c not in wanted.values() for c in candidates]]
        wanted[ids[name]] = int(candidates[np.argmin(np.linalg.norm(verts[candidates] - target, axis=1))])
    rest = iter(v for v in range(len(verts)) if v not in set(wanted.values()))
    order = np.array([wanted[new] if new in wanted else next(rest) for new in range(len(verts))])  # new -> old
    new_index = np.argsort(order)  # old -> new
    out = {key: value[order] for key, value in arrays.items() if key not in ("f", "J_regressor")}
    out["J_regressor"] = arrays["J_regressor"][:, order]
    out["f"] = new_index[arrays["f"]]
    return out


def write_synthetic_body(model_dir: str | Path, gender: str = "neutral") -> Path:
    """Write the synthetic body as `<model_dir>/smpl/SMPL_<GENDER>.npz` (smplx's folder layout)."""
    path = Path(model_dir) / "smpl" / f"SMPL_{gender.upper()}.npz"
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as out:
            np.savez_compressed(out, **synthetic_body())
    log.info("wrote the synthetic SMPL body %s", path)
    return path
