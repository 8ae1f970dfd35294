"""Human mesh recovery data and body model (docs/design.md §4-5): pure torch + numpy + smplx, no Ray, no MLflow.

    lsr1.hmr.body            SMPL through smplx (real or synthetic files), the joints-only forward
    lsr1.hmr.formats         AMASS and 3DPW readers, the restricted unpickler, Parquet preparation
    lsr1.hmr.camera          COCO-18 / J14 mappings, LGD's camera, keypoint normalisation, augmentation
    lsr1.hmr.metrics         MPJPE and PA-MPJPE
    lsr1.hmr.rotations       axis-angle, 6D and matrices
    lsr1.hmr.synthetic_body  a procedural body in SMPL's format
    lsr1.hmr.synthetic       AMASS- and 3DPW-format stand-ins (`python -m lsr1.hmr.synthetic`)

The HMR inner problem itself is `lsr1.tasks.hmr.HMRProblem`; the initializer network, a learned optimizer, is
`lsr1.learned.initializer`. Nothing here imports an optimizer, a task or a learner.
"""
