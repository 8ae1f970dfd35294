import math
from collections import Counter

import numpy as np
import pytest
import torch
from smplx.vertex_ids import vertex_ids

from lsr1.hmr.body import NUM_FACES, NUM_VERTICES, BodyModel, find_model_file, forward_joints
from lsr1.hmr.rotations import axis_angle_to_matrix
from lsr1.hmr.synthetic_body import REST_JOINTS, synthetic_body
from tests.hmr_data import hmr_data  # noqa: F401  (session fixture)

IDS = vertex_ids["smplh"]


@pytest.fixture(scope="module")
def body(hmr_data):  # noqa: F811
    return BodyModel(hmr_data["body"])


def _smplx(body, pose, betas):
    with torch.no_grad():
        return body.smpl(betas=betas, body_pose=pose[:, 3:], global_orient=pose[:, :3])


def test_synthetic_body_is_one_closed_surface_in_smpl_format():
    a = synthetic_body()
    assert a["v_template"].shape == (NUM_VERTICES, 3) and a["f"].shape == (NUM_FACES, 3)
    assert a["shapedirs"].shape == (NUM_VERTICES, 3, 10) and a["posedirs"].shape == (NUM_VERTICES, 3, 207)
    assert a["J_regressor"].shape == (24, NUM_VERTICES) and a["weights"].shape == (NUM_VERTICES, 24)
    assert a["kintree_table"][0, 0] == 4294967295 and list(a["kintree_table"][1]) == list(range(24))
    faces = a["f"].astype(np.int64)
    directed = Counter(map(tuple, np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])))
    assert max(directed.values()) == 1 and all((b, c) in directed for c, b in directed), "not a closed oriented manifold"
    assert NUM_VERTICES - len(directed) // 2 + NUM_FACES == 2  # Euler characteristic of a sphere
    neighbours = [[] for _ in range(NUM_VERTICES)]
    for b, c in directed:
        neighbours[b].append(c)
    seen, todo = {0}, [0]
    while todo:
        for n in neighbours[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    assert len(seen) == NUM_VERTICES, "the surface is not connected"
    np.testing.assert_allclose(a["J_regressor"] @ a["v_template"], REST_JOINTS, atol=1e-12)
    np.testing.assert_allclose(a["weights"].sum(1), 1.0, atol=1e-12)
    assert (a["weights"] >= 0).all()


def test_extra_joint_vertices_sit_at_anatomical_spots():
    v = synthetic_body()["v_template"]
    nose, reye, leye, rear, lear = (v[IDS[k]] for k in ("nose", "reye", "leye", "rear", "lear"))
    head = REST_JOINTS[15]
    assert nose[2] > head[2] + 0.05 and abs(nose[0]) < 0.01  # in front, centred
    assert reye[0] < 0 < leye[0] and reye[1] > nose[1] and leye[1] > nose[1]  # SMPL's right is -x
    assert rear[0] < reye[0] and lear[0] > leye[0] and abs(rear[2] - head[2]) < 0.05  # on the sides
    for side, ankle in (("L", REST_JOINTS[7]), ("R", REST_JOINTS[8])):
        toe, heel = v[IDS[f"{side}BigToe"]], v[IDS[f"{side}Heel"]]
        assert toe[2] > ankle[2] + 0.1 and heel[2] < ankle[2] and toe[1] < ankle[1] and heel[1] < ankle[1]
    for side, wrist in (("l", REST_JOINTS[20]), ("r", REST_JOINTS[21])):
        for finger in ("index", "middle", "ring", "pinky"):
            assert abs(v[IDS[f"{side}{finger}"]][0]) > abs(wrist[0]) + 0.15
        assert v[IDS[f"{side}thumb"]][2] > max(wrist[2], v[IDS[f"{side}index"]][2]) + 0.01  # the thumb is in front


def test_smplx_loads_the_model_folder(hmr_data, body):  # noqa: F811
    assert find_model_file(hmr_data["body"]) == hmr_data["body"] / "smpl" / "SMPL_NEUTRAL.npz"
    assert find_model_file(hmr_data["body"] / "smpl") == hmr_data["body"] / "smpl" / "SMPL_NEUTRAL.npz"
    with pytest.raises(FileNotFoundError, match="SMPL_FEMALE"):
        find_model_file(hmr_data["body"], "female")
    out = _smplx(body, torch.zeros(1, 72), torch.zeros(1, 10))
    assert out.vertices.shape == (1, NUM_VERTICES, 3) and out.joints.shape == (1, 45, 3)
    np.testing.assert_allclose(out.joints[0, :24].numpy(), REST_JOINTS, atol=1e-5)


def test_elbow_and_knee_flexion_bend_the_limbs(body):
    forearm = np.linalg.norm(REST_JOINTS[20] - REST_JOINTS[18])
    rest = _smplx(body, torch.zeros(1, 72), torch.zeros(1, 10))
    pose = torch.zeros(1, 72)
    pose[0, 18 * 3 + 1] = -math.pi / 2  # left elbow: flexion is a rotation about -y for the arm along +x
    pose[0, 4 * 3] = math.pi / 2  # left knee: flexion about +x
    bent = _smplx(body, pose, torch.zeros(1, 10))
    wrist = bent.joints[0, 20] - rest.joints[0, 20]
    assert abs(float(wrist.norm()) - math.sqrt(2) * forearm) < 1e-4  # a quarter circle of radius forearm
    quarter = axis_angle_to_matrix(pose[0, 54:57].double()).numpy()
    np.testing.assert_allclose(bent.joints[0, 20] - bent.joints[0, 18], quarter @ (REST_JOINTS[20] - REST_JOINTS[18]), atol=1e-5)
    assert float(bent.joints[0, 20, 2] - bent.joints[0, 18, 2]) > 0.9 * forearm  # the forearm points forward
    fingertip = bent.vertices[0, IDS["lmiddle"]] - bent.joints[0, 18]
    assert fingertip[2] > 0.3 and abs(float(fingertip[0])) < 0.05  # the hand follows the forearm
    shin = np.linalg.norm(REST_JOINTS[7] - REST_JOINTS[4])
    assert float(bent.joints[0, 4, 2] - bent.joints[0, 7, 2]) > 0.95 * shin  # the shin points backwards
    assert torch.equal(bent.joints[0, 21], rest.joints[0, 21])  # the other arm does not move


def test_first_shape_direction_changes_height_and_second_girth(body):
    betas = torch.zeros(4, 10)
    betas[0, 0], betas[1, 0], betas[2, 1] = -2.0, 2.0, 2.0
    v = _smplx(body, torch.zeros(4, 72), betas).vertices  # row 3: the template
    height = v[..., 1].amax(1) - v[..., 1].amin(1)
    assert float(height[1] - height[0]) > 0.2  # ~7 % taller per unit of beta 0
    belly = [float(verts[(verts[:, 1] - REST_JOINTS[3, 1]).abs() < 0.03][:, 2].amax()) for verts in v]
    assert belly[2] > belly[3] + 0.01 and abs(float(height[2] - height[3])) < 0.01  # beta 1: girth, not height


@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_joints_only_forward_equals_smplx(body, scale):
    torch.manual_seed(1)
    pose, betas = scale * torch.randn(64, 72), torch.randn(64, 10)
    expected = _smplx(body, pose, betas).joints
    model = body.joint_model()
    got = forward_joints(model, axis_angle_to_matrix(pose.reshape(64, 24, 3)), betas)
    assert got.shape == (64, 45, 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_joints_only_forward_with_an_evaluation_regressor(body):
    rng = np.random.default_rng(0)
    regressor = np.zeros((14, NUM_VERTICES))
    for row in regressor:
        cols = rng.choice(NUM_VERTICES, 30, replace=False)
        row[cols] = rng.random(30)
        row /= row.sum()
    model = body.joint_model(regressor)
    assert model.vertex_ids.numel() > 21 and model.eval_regressor.shape == (14, model.vertex_ids.numel())
    pose, betas = torch.randn(8, 72), torch.randn(8, 10)
    vertices = _smplx(body, pose, betas).vertices
    points = forward_joints(model, axis_angle_to_matrix(pose.reshape(8, 24, 3)), betas)
    got = torch.einsum("ke,bec->bkc", model.eval_regressor, points[:, 24:])
    expected = torch.einsum("kv,bvc->bkc", torch.as_tensor(regressor, dtype=torch.float32), vertices)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
