"""pipeline.report: the measured blocks of docs/results.md are rendered from files and MLflow, never by hand."""

from __future__ import annotations

import json

import pytest

from pipeline.report import ReportError, render_blocks, run_benchmark
from pipeline.tracking import Run

TEXT = "".join(
    f"## {name}\n<!-- report:{name} -->\nstale\n<!-- /report:{name} -->\nprose stays\n"
    for name in ("profiles", "bfgs_steps", "hmr_table", "benchmark_step_cost")
)


def _sources(root, uri):
    (root / "docs/profiles").mkdir(parents=True)
    (root / "docs/profiles/distances.csv").write_text("problem,A,B\np1,1e-3,1e-1\np2,0.5,0.25\n")
    (root / "docs/bfgs_steps").mkdir(parents=True)
    methods = ("BFGS-LSTM", "BFGS-Armijo", "BFGS fixed step", "BFGS-HD scalar", "BFGS-HD coord")
    header = ["family", "N"] + [f"{m} iterations" for m in methods]
    (root / "docs/bfgs_steps/iterations.csv").write_text(",".join(header) + "\nlogistic,20,20.0,40.0,30.0,31.0,32.0\n")
    (root / "benchmarks/results").mkdir(parents=True)
    (root / "benchmarks/results/step_cost.json").write_text(json.dumps({"lsr1_ms": 1.5, "ratio": 0.5}))
    from lsr1.config import ExperimentConfig

    run = Run.open(uri, "hmr_demo", "evaluate-hmr-table", ExperimentConfig())
    curves = root / "curves.json"
    curves.write_text(
        json.dumps(
            [
                {
                    "name": "L-SR1",
                    "pa_mpjpe14_smpl": [150.0, 140.0],
                    "mpjpe14_smpl": [230.0, 220.0],
                    "reprojection": [0.5, 0.25],
                    "evaluations": [0.0, 1.0],
                },
                {"name": "LGD", "pa_mpjpe14_smpl": [160.0, 135.0], "mpjpe14_smpl": [240.0, 200.0], "reprojection": [0.5, 0.125]},
            ]
        )
    )
    run.log_artifact(curves, "test")
    return run


def test_every_block_is_rendered_from_its_source_and_the_prose_is_kept(tmp_path, mlflow_store):
    run = _sources(tmp_path, mlflow_store)
    out = render_blocks(TEXT, tmp_path, mlflow_store)
    assert "stale" not in out and out.count("prose stays") == 4
    # ratios: A 1 and 2, B 100 and 1 -> rho(1) 0.5 each; A's profile reaches 1 at tau = 2, B's at 100
    assert "| A | 0.964 | 1 | 0.50 | 1.00 |" in out and "| B | 0.750 | 1 | 0.50 | 0.50 |" in out
    assert "| logistic | 20 | 20 | 30 | 1.50× | 2.00× |" in out
    # per step: PA-MPJPE at k = 0 and 1, the lowest and its step, reprojection at k = 1, evaluations (where
    # counted), no parameter counts
    assert "| L-SR1 | 150.0 | 140.0 | 140.0 (1) | 0.25 | 1.0 | — | 51.58 at step 13 (51.74 at 4); 10.4 M |" in out
    assert "| LGD | 160.0 | 135.0 | 135.0 (1) | 0.125 | — | — | 55.90 at step 4; 17.4 M |" in out
    assert run.run_id in out
    assert "| lsr1_ms | 1.5 |" in out and "| ratio | 0.5 |" in out
    assert render_blocks(out, tmp_path, mlflow_store) == out  # rendering again changes nothing


def test_missing_sources_say_which_command_makes_them(tmp_path, mlflow_store):
    out = render_blocks(TEXT, tmp_path, mlflow_store)
    assert "run `python -m lsr1.profiles --out docs/profiles`" in out and "run `make experiments`" in out


def test_only_the_named_blocks_are_rendered_and_the_others_kept_as_they_are(tmp_path, mlflow_store):
    kept = "<!-- report:profiles -->\nthe last rendering\n<!-- /report:profiles -->\n"
    text = kept + "<!-- report:runtime -->\n<!-- /report:runtime -->\n"
    out = render_blocks(text, tmp_path, mlflow_store, only={"runtime"})
    runtime = out.removeprefix(kept)
    assert out.startswith(kept) and runtime == render_blocks(runtime, tmp_path, mlflow_store) != text.removeprefix(kept)
    with pytest.raises(ReportError, match="no block \\['quadratic'\\]"):
        render_blocks(text, tmp_path, mlflow_store, only={"quadratic"})


def test_unknown_or_unclosed_blocks_are_errors(tmp_path, mlflow_store):
    with pytest.raises(ReportError, match="block 'nope' has no renderer"):
        render_blocks("<!-- report:nope -->\n<!-- /report:nope -->\n", tmp_path, mlflow_store)
    with pytest.raises(ReportError, match="'profiles' is opened but not closed"):
        render_blocks("<!-- report:profiles -->\n", tmp_path, mlflow_store)


def test_a_benchmark_is_run_and_its_last_line_saved_or_its_failure_named(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks/fine.py").write_text("print('a table')\nprint('{\"x_ms\": 2.5}')\n")
    (tmp_path / "benchmarks/broken.py").write_text("raise SystemExit('no GPU here')\n")
    assert json.loads(run_benchmark("fine", tmp_path).read_text()) == {"x_ms": 2.5}
    with pytest.raises(ReportError, match=r"broken.py failed \(exit 1\): no GPU here"):
        run_benchmark("broken", tmp_path)


def test_the_ablation_block_reads_the_newest_ablation_sweep(tmp_path, mlflow_store):
    from lsr1.config import load_config

    parent = Run.open(
        mlflow_store,
        "quadratic",
        "ablation",
        load_config("configs/quadratic.yaml"),
        tags={"lsr1.kind": "sweep", "lsr1.sweep_space": "tune_spaces/ablation.yaml"},
    )
    for hidden, inputs, loss in ((64, ["x", "g"], 0.5), (128, ["x", "p", "d", "g", "q"], 0.25)):
        config = load_config("configs/quadratic.yaml", [f"lsr1.hidden_dim={hidden}", f"lsr1.encoder_inputs={inputs}"])
        child = Run.open(mlflow_store, "quadratic", f"ablation-{hidden}", config, tags={"mlflow.parentRunId": parent.run_id})
        child.log_metrics([(300, {"val_loss": loss, "val_loss_std": loss / 10})])
    out = render_blocks("<!-- report:ablation -->\n<!-- /report:ablation -->\n", tmp_path, mlflow_store)
    assert (
        "| 64 | (x, g) | not reported | 0.5 | 0.05 | 300 | 0.5 (300) |" in out
        and "| 128 | (x, p, d, g, q) | −2.56 ± 2.80 | 0.25 | 0.025 | 300 | 0.25 (300) |" in out
    )


def test_the_second_ablation_lists_the_step_and_meta_gradient_switches(tmp_path, mlflow_store):
    from lsr1.config import load_config

    parent = Run.open(
        mlflow_store,
        "quadratic",
        "ablation-step",
        load_config("configs/quadratic.yaml"),
        tags={"lsr1.kind": "sweep", "lsr1.sweep_space": "tune_spaces/ablation_step.yaml"},
    )
    config = load_config("configs/quadratic.yaml", ["lsr1.identity_in_step=true", "meta.second_order=false"])
    child = Run.open(mlflow_store, "quadratic", "ablation-step-1", config, tags={"mlflow.parentRunId": parent.run_id})
    child.log_metrics([(100, {"val_loss": -0.5, "val_loss_std": 0.2})])
    out = render_blocks(
        "<!-- report:ablation_step -->\n<!-- /report:ablation_step -->\n<!-- report:ablation -->\n<!-- /report:ablation -->\n",
        tmp_path,
        mlflow_store,
    )
    assert "| True | False | -0.5 | 0.2 | 100 | -0.5 (100) |" in out and "Not measured yet: a sweep over tune_spaces/ablation.yaml" in out


def test_the_hmr_table_has_parameter_counts_and_copies_its_figures(tmp_path, mlflow_store):
    from lsr1.config import ExperimentConfig

    run = Run.open(mlflow_store, "hmr_demo", "evaluate-hmr-table", ExperimentConfig())
    curve = {
        "name": "L-SR1 w/o secant term",
        "pa_mpjpe14_smpl": [150.0, 120.0, 130.0],
        "mpjpe14_smpl": [1.0, 1.0, 1.0],
        "reprojection": [0.5, 0.25, 0.2],
    }
    counted = {**curve, "name": "L-BFGS (m=10) from the L-SR1 initializer", "evaluations": [0.0, 1.5, 3.25]}
    (tmp_path / "curves.json").write_text(json.dumps([curve, counted]))
    (tmp_path / "models.json").write_text(
        json.dumps([{"name": "L-SR1 w/o secant term", "initializer_params": 1234567, "update_params": 890}])
    )
    (tmp_path / "pa_mpjpe.png").write_bytes(b"png")
    for name in ("curves.json", "models.json", "pa_mpjpe.png"):
        run.log_artifact(tmp_path / name, "test")
    out = render_blocks("<!-- report:hmr_table -->\n<!-- /report:hmr_table -->\n", tmp_path, mlflow_store)
    assert (
        "| L-SR1 w/o secant term | 150.0 | 120.0 | 130.0 | 120.0 (1) | 0.25 | 0.2 | — | 1,234,567 + 890 | — |" in out
    )  # older curves: not counted
    assert "| L-BFGS (m=10) from the L-SR1 initializer | 150.0 | 120.0 | 130.0 | 120.0 (1) | 0.25 | 0.2 | 3.2 | — | — |" in out
    assert (tmp_path / "docs/hmr/pa_mpjpe.png").read_bytes() == b"png"


def test_the_runtime_table_reads_the_nested_benchmark_figures(tmp_path, mlflow_store):
    (tmp_path / "benchmarks/results").mkdir(parents=True)
    figures = {
        "machine": "x86_64 CPU, 1 thread(s)",
        "inference": {"256": {m: {"ms": ms, "peak_mib": 2 * ms} for m, ms in (("lsr1", 30.0), ("lgd", 10.0), ("adam", 5.0))}},
        "training": {"4": {m: {"ms": ms, "peak_mib": 3 * ms} for m, ms in (("lsr1", 7.0), ("lgd", 6.0))}},
    }
    (tmp_path / "benchmarks/results/hmr_step.json").write_text(json.dumps(figures))
    out = render_blocks("<!-- report:runtime -->\n<!-- /report:runtime -->\n", tmp_path, mlflow_store)
    assert "| inference | 256 | 30 | 10 | 5 | 60 | 20 | 10 | L-SR1 91 ms / 14.60 GiB, LGD 166 ms / 17.81 GiB (RTX 3090) |" in out
    assert "| meta-training (per unrolled step) | 4 | 7 | 6 | — | 21 | 18 | — |  |" in out


def test_the_data_efficiency_table_reads_the_sweeps_test_comparison(tmp_path, mlflow_store):
    from lsr1.config import load_config

    parent = Run.open(
        mlflow_store,
        "hmr_data_efficiency",
        "data-efficiency",
        load_config("configs/hmr_data_efficiency.yaml"),
        tags={"lsr1.kind": "sweep", "lsr1.sweep_space": "tune_spaces/data_efficiency.yaml"},
    )
    out = render_blocks("<!-- report:data_efficiency -->\n<!-- /report:data_efficiency -->\n", tmp_path, mlflow_store)
    assert "Not measured yet: the test comparison of sweep run" in out  # a sweep that did not finish
    (tmp_path / "comparison.csv").write_text(
        "rank,trial,val_pa_mpjpe,run_id,hmr.data_fraction,test_pa_mpjpe,test_mpjpe,test_pa_mpjpe_init\n"
        "1,a,140.0,r1,0.1,150.0,200.0,160.0\n2,b,141.0,r2,0.8,151.0,201.0,161.0\n"
    )
    parent.log_artifact(tmp_path / "comparison.csv", "comparison")
    out = render_blocks("<!-- report:data_efficiency -->\n<!-- /report:data_efficiency -->\n", tmp_path, mlflow_store)
    assert out.index("| 80 % | 51.67 | 141.0 | 151.0 | 161.0 | 201.0 |") < out.index("| 10 % | 53.03 | 140.0 | 150.0 | 160.0 | 200.0 |")


def test_the_quadratic_and_sensitivity_blocks(tmp_path, mlflow_store):
    from lsr1.config import load_config

    config = load_config("configs/quadratic.yaml")
    run = Run.open(mlflow_store, "quadratic", "evaluate-quadratic-test", config)
    (tmp_path / "curves.json").write_text(
        json.dumps([{"name": "L-BFGS (m=2)", "gap": [35.0] + [1.0] * 9 + [0.125] * 11, "newton_cosine": [0.5] * 21}])
    )
    run.log_artifact(tmp_path / "curves.json", "test")
    parent = Run.open(
        mlflow_store, "quadratic", "sensitivity", config, tags={"lsr1.kind": "sweep", "lsr1.sweep_space": "tune_spaces/sensitivity.yaml"}
    )
    for lam, loss in ((100.0, -0.5), (0.0, -2.0)):
        child = Run.open(
            mlflow_store,
            "quadratic",
            f"sensitivity-{lam}",
            load_config("configs/quadratic.yaml", [f"lsr1.lambda_sec={lam}", "lsr1.gamma1=0.4"]),
            tags={"mlflow.parentRunId": parent.run_id},
        )
        child.log_metrics([(100, {"val_loss": 2 * loss, "val_loss_std": 1.0}), (300, {"val_loss": loss, "val_loss_std": 1.0})])
    out = render_blocks(
        "<!-- report:quadratic -->\n<!-- /report:quadratic -->\n<!-- report:sensitivity -->\n<!-- /report:sensitivity -->\n",
        tmp_path,
        mlflow_store,
    )
    assert "| L-BFGS (m=2) | 35 | 1 | 0.125 | 0.125 | 0.50 |" in out  # gap at k = 0, 5, 10, 20; cosine at 20
    assert (tmp_path / "docs/quadratic/curves.json").is_file()
    assert out.index("| 0.0 | 0.4 | -2 | 1 | 300 | -4 (100) |") < out.index("| 100.0 | 0.4 | -0.5 | 1 | 300 | -1 (100) |")


def test_the_official_hmr_block_reads_its_own_run_with_lgds_four_estimates(tmp_path, mlflow_store):
    from lsr1.config import ExperimentConfig

    run = Run.open(mlflow_store, "hmr_official", "evaluate-official-hmr-comparison", ExperimentConfig())
    errors = [160.0, 150.0, 140.0, 130.0, 125.0, 120.0]
    curve = {"name": "L-SR1 (official)", "pa_mpjpe14_smpl": errors, "mpjpe14_smpl": errors, "reprojection": [0.5] * 6}
    (tmp_path / "curves.json").write_text(json.dumps([curve]))
    run.log_artifact(tmp_path / "curves.json", "test")
    out = render_blocks("<!-- report:hmr_official -->\n<!-- /report:hmr_official -->\n", tmp_path, mlflow_store)
    assert "| PA-MPJPE k = 0 | PA-MPJPE k = 3 | PA-MPJPE k = 4 | PA-MPJPE k = 5 |" in out
    assert "| L-SR1 (official) | 160.0 | 130.0 | 125.0 | 120.0 | 120.0 (5) |" in out and "project page" in out
    assert (tmp_path / "docs/hmr_official/curves.json").exists()
    assert "make official-hmr" in render_blocks(
        "<!-- report:hmr_official -->\n<!-- /report:hmr_official -->\n", tmp_path / "x", f"sqlite:///{tmp_path / 'empty.db'}"
    )
