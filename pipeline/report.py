"""Regenerate the measured tables of docs/results.md: `make report` (or `python -m pipeline.report`).

docs/results.md is prose around blocks that only this command writes, between `<!-- report:NAME -->` and
`<!-- /report:NAME -->`, from what the product's own commands left behind:

    quadratic        MLflow: the run `evaluate-quadratic-test` (experiment quadratic) of the shipped quadratic
                     models; its test/curves.json; its files copied to docs/quadratic/
    quadratic_models the training summaries stored with the shipped models (`lsr1.pretrained.info`)
    profiles         docs/profiles/distances.csv      `python -m lsr1.profiles --out docs/profiles`
    bfgs_steps       docs/bfgs_steps/iterations.csv   `python -m lsr1.iterations --out docs/bfgs_steps`
    hmr_table        MLflow: the run `evaluate-hmr-table` of experiment hmr_demo (`make experiments`, after
                     `make demo`), its test/curves.json and models.json; its files copied to docs/hmr/
    hmr_official     the same for the run `evaluate-official-hmr-comparison` of experiment hmr_official
                     (`make official-hmr`); docs/hmr_official/
    ablation         MLflow: the newest sweep over tune_spaces/ablation.yaml (the command is in that file),
                     its trials' final validation loss; ablation_step and sensitivity the same for
                     tune_spaces/ablation_step.yaml and tune_spaces/sensitivity.yaml
    data_efficiency  MLflow: the newest sweep over tune_spaces/data_efficiency.yaml, its test comparison
    runtime          benchmarks/results/hmr_step.json (nested by batch size and method)
    benchmark_NAME   benchmarks/results/NAME.json     the last line of `benchmarks/NAME.py`, which
                     `--run-benchmarks NAME ...` runs and saves first

`make experiments` runs what the MLflow blocks read (minutes to tens of minutes each); `make report` runs
the profiles, the step-size iterations and the benchmarks, then renders.

A block whose source is missing says so and names the command that makes it; a block without a renderer,
or one that is opened and not closed, is an error naming it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from lsr1.experiments.evaluate import joint_metrics
from lsr1.experiments.profiles import ProfileResult, performance_ratios, profile

__all__ = ["RENDERERS", "ReportError", "render_blocks", "main"]

log = logging.getLogger("pipeline.report")

RESULTS = Path("docs/results.md")
BENCHMARK_DIR = Path("benchmarks/results")
_BLOCK = re.compile(r"<!-- report:(?P<name>[a-z_]+) -->\n.*?<!-- /report:(?P=name) -->", re.S)


class ReportError(RuntimeError):
    """A results file whose blocks cannot be rendered."""


def _missing(what: str, command: str) -> str:
    return f"*Not measured yet: {what} is missing; run `{command}`.*"


def _csv(path: Path, as_dicts: bool) -> list | None:
    """The rows of a CSV file (dicts by its header, or lists), None if there is no such file."""
    if not path.is_file():
        return None
    with path.open() as f:
        return list(csv.DictReader(f) if as_dicts else csv.reader(f))


def profiles_block(root: Path, uri: str) -> str:
    path = root / "docs/profiles/distances.csv"
    rows = _csv(path, as_dicts=False)
    if rows is None:
        return _missing(str(path), "python -m lsr1.profiles --out docs/profiles")
    solvers = rows[0][1:]
    distances = torch.tensor([[float(v) for v in row[1:]] for row in rows[1:]], dtype=torch.float64)
    ratios = performance_ratios(distances)
    result = ProfileResult([row[0] for row in rows[1:]], solvers, distances, ratios, {}, 0, 0.0)
    taus = torch.logspace(0, 4, 200, dtype=torch.float64)
    area, wins = result.area(taus), result.wins()
    lines = ["| solver | area under ρ(τ), log τ ∈ [1, 1e4] | wins | ρ(1) | ρ(10) |", "|---|---|---|---|---|"]
    for s, name in enumerate(solvers):
        at = [float(profile(ratios[:, s : s + 1], torch.tensor([t], dtype=torch.float64))[0, 0]) for t in (1.0, 10.0)]
        lines.append(f"| {name} | {float(area[s]):.3f} | {int(wins[s])} | {at[0]:.2f} | {at[1]:.2f} |")
    return "\n".join(lines) + f"\n\n({len(rows) - 1} problems; from `{path.relative_to(root)}`.)"


def bfgs_steps_block(root: Path, uri: str) -> str:
    path = root / "docs/bfgs_steps/iterations.csv"
    rows = _csv(path, as_dicts=True)
    if rows is None:
        return _missing(str(path), "python -m lsr1.iterations --out docs/bfgs_steps")
    lines = ["| family | N | BFGS-LSTM iterations | best of fixed step / HD | speed-up | vs BFGS-Armijo |", "|---|---|---|---|---|---|"]
    for r in rows:
        learned = float(r["BFGS-LSTM iterations"])
        best = min(float(r[f"{m} iterations"]) for m in ("BFGS fixed step", "BFGS-HD scalar", "BFGS-HD coord"))
        armijo = float(r["BFGS-Armijo iterations"])
        lines.append(f"| {r['family']} | {r['N']} | {learned:.0f} | {best:.0f} | {best / learned:.2f}× | {armijo / learned:.2f}× |")
    return "\n".join(lines) + f"\n\n(Median iterations to a relative suboptimality of 1e-6; from `{path.relative_to(root)}`.)"


# the paper's Table 4 (validation loss, mean ± std over the 32 problems), its Table 2 and Table 1 (PA-MPJPE, mm)
PAPER_TABLE4 = {
    ("128", "(x, g)"): "−2.09 ± 1.85",
    ("128", "(x, d, g)"): "−2.16 ± 1.95",
    ("128", "(x, p, g, q)"): "−2.51 ± 2.64",
    ("64", "(x, p, d, g, q)"): "−1.90 ± 1.76",
    ("128", "(x, p, d, g, q)"): "−2.56 ± 2.80",
}
PAPER_TABLE2 = {0.8: "51.67", 0.1: "53.03", 0.01: "56.14", 0.001: "70.78"}
PAPER_TABLE1 = {
    "L-SR1": "51.58 at step 13 (51.74 at 4); 10.4 M",
    "L-SR1 (official)": "51.74 at 4, 51.58 at its best horizon (project page)",
    "LGD": "55.90 at step 4; 17.4 M",
}


def _evaluation(uri: str, experiment: str, run_name: str, files: list[str], into: Path) -> tuple[str, dict[str, Path]] | None:
    """The newest `pipeline.evaluate --log-experiment` run of that name: its id and the test/ artifacts
    `files` downloaded into `into` (those it has); None if there is no such run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = (
        []
        if found is None
        else client.search_runs(
            [found.experiment_id], f"tags.`lsr1.run_name` = '{run_name}'", order_by=["attributes.start_time DESC"], max_results=1
        )
    )
    if not runs:
        return None
    got = {}
    for name in files:
        try:
            got[name] = Path(client.download_artifacts(runs[0].info.run_id, f"test/{name}", str(into)))
        except (MlflowException, OSError):
            continue
    return runs[0].info.run_id, got


def _copy_into(files: dict[str, Path], into: Path) -> None:
    """The evaluation's files (figures, results.md, curves.json) as the report's copy under docs/."""
    into.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        shutil.copyfile(path, into / name)


def quadratic_block(root: Path, uri: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        found = _evaluation(
            uri,
            "quadratic",
            "evaluate-quadratic-test",
            ["curves.json", "results.md", "gap.png", "newton_cosine.png", "objective.png"],
            Path(tmp),
        )
        if found is None or "curves.json" not in found[1]:
            return _missing(f"the MLflow run evaluate-quadratic-test at {uri}", "make experiments")
        run_id, files = found
        curves = json.loads(files["curves.json"].read_text())
        _copy_into(files, root / "docs/quadratic")
    steps = len(curves[0]["gap"]) - 1
    at = sorted({k for k in (0, 5, 10, steps) if k <= steps})
    lines = ["| method | " + " | ".join(f"gap k = {k}" for k in at) + f" | cos(step, Newton) k = {steps} |", "|---" * (len(at) + 2) + "|"]
    for c in curves:
        lines.append(f"| {c['name']} | " + " | ".join(f"{c['gap'][k]:.3g}" for k in at) + f" | {c['newton_cosine'][-1]:.2f} |")
    return "\n".join(lines) + f"\n\n(Mean over the test problems; MLflow run `{run_id}`; figures and every number in `docs/quadratic/`.)"


def quadratic_models_block(root: Path, uri: str) -> str:
    from lsr1 import pretrained

    lines = [
        "| shipped model | λ_sec | paper (Table 4) | best validation loss | at meta-iteration | trained |",
        "|---|---|---|---|---|---|",
    ]
    full = PAPER_TABLE4[("128", "(x, p, d, g, q)")]  # the paper's L-SR1 with all five inputs
    other = "— (the project's formulation, validated on log10 of the gap at N = 10)"
    for name, paper in (
        ("quadratic", other),
        ("quadratic_noproj", other),
        ("quadratic_official", full),
        ("mix", other),
        ("mix_lbfgs", other),
        ("mix_lbfgs_long", other),
    ):
        info = pretrained.info(name)
        lines.append(
            f"| `{name}` | {info['config']['lsr1']['lambda_sec']:g} | {paper} | {info['best_val_loss']:.2f} | {info['best_iteration']} | "
            f"{info.get('trained_with', '')} |"
        )
    return "\n".join(lines) + "\n\n(From `lsr1.pretrained.info(name)`: the summary stored with each shipped model.)"


def _hmr_block(root: Path, uri: str, experiment: str, run_name: str, figures: Path, columns: tuple[int, ...], command: str) -> str:
    """Per-step PA-MPJPE (at `columns` and the last step) and reprojection error of every method of an HMR
    evaluation run, with parameter counts where the run has models.json (pipeline.evaluate writes it)."""
    with tempfile.TemporaryDirectory() as tmp:
        found = _evaluation(
            uri,
            experiment,
            run_name,
            ["curves.json", "models.json", "results.md", "pa_mpjpe.png", "reprojection.png", "mpjpe.png"],
            Path(tmp),
        )
        if found is None or "curves.json" not in found[1]:
            return _missing(f"the MLflow run {run_name} at {uri}", command)
        run_id, files = found
        curves = json.loads(files["curves.json"].read_text())
        models = {m["name"]: m for m in json.loads(files["models.json"].read_text())} if "models.json" in files else {}
        _copy_into(files, root / figures)
    pa, _ = joint_metrics(curves[0])
    steps = len(curves[0][pa]) - 1
    at = sorted({k for k in (*columns, steps) if k <= steps})
    lines = [
        "| method | "
        + " | ".join(f"PA-MPJPE k = {k}" for k in at)
        + " | lowest (step) | "
        + " | ".join(f"reprojection k = {k}" for k in at[1:])
        + f" | evaluations by k = {steps} | parameters: initializer + update | paper (3DPW, Table 1) |",
        "|---" * (2 * len(at) + 4) + "|",
    ]
    for c in curves:
        errors = c[pa]
        best = min(range(len(errors)), key=errors.__getitem__)
        m = models.get(c["name"])
        size = f"{m['initializer_params']:,} + {m['update_params']:,}" if m else "—"
        spent = f"{c['evaluations'][-1]:.1f}" if "evaluations" in c else "—"  # curves.json written before they were counted
        lines.append(
            f"| {c['name']} | "
            + " | ".join(f"{errors[k]:.1f}" for k in at)
            + f" | {errors[best]:.1f} ({best}) | "
            + " | ".join(f"{c['reprojection'][k]:.4g}" for k in at[1:])
            + f" | {spent} | {size} | {PAPER_TABLE1.get(c['name'], '—')} |"
        )
    return (
        "\n".join(lines)
        + f"\n\n(mm; step 0 is the method's initializer alone; MLflow run `{run_id}`, {pa.split('_')[-1].upper()} joints; figures in `{figures}/`.)"
    )


def hmr_table_block(root: Path, uri: str) -> str:
    return _hmr_block(root, uri, "hmr_demo", "evaluate-hmr-table", Path("docs/hmr"), (0, 1, 4), "make experiments")


def hmr_official_block(root: Path, uri: str) -> str:
    """The authors' HMR protocol beside LGD's at the same budget; k = 3 is LGD's "4 steps" (4 estimates)."""
    return _hmr_block(
        root, uri, "hmr_official", "evaluate-official-hmr-comparison", Path("docs/hmr_official"), (0, 3, 4), "make official-hmr"
    )


def _newest_sweep(uri: str, space: str):
    """The newest sweep run over tune_spaces/<space> in the store, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    sweeps = [
        r
        for r in client.search_runs(experiments, "tags.`lsr1.kind` = 'sweep'", order_by=["attributes.start_time DESC"])
        if Path(r.data.tags.get("lsr1.sweep_space", "")).name == space
    ]
    return sweeps[0] if sweeps else None


def _sweep_trials(uri: str, space: str) -> tuple[str, list] | None:
    """The newest sweep over tune_spaces/<space> in the store: its run id and its finished trials' runs,
    each with the meta-iteration of its final validation as the metric `_step`, its best validation and
    that one's meta-iteration as `_best` and `_best_step`."""
    from mlflow.tracking import MlflowClient

    sweep = _newest_sweep(uri, space)
    if sweep is None:
        return None
    client = MlflowClient(uri)
    trials = client.search_runs([sweep.info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
    finished = [t for t in trials if "val_loss" in t.data.metrics]
    for t in finished:
        history = client.get_metric_history(t.info.run_id, "val_loss")
        best = min(history, key=lambda m: m.value)
        t.data.metrics.update(_step=max(m.step for m in history), _best=best.value, _best_step=best.step)
    return sweep.info.run_id, finished


def _ablation_table(uri: str, space: str, columns: dict[str, Callable[[dict[str, str]], str]]) -> str:
    """One row per trial of the newest sweep over `space`: the given param columns, the final validation
    loss, its std over problems and the meta-iteration it was taken at, and the best validation loss (the
    one the sweep ranks by and the checkpoint it keeps)."""
    found = _sweep_trials(uri, space)
    if found is None:
        return _missing(f"a sweep over tune_spaces/{space} at {uri}", "make experiments")
    sweep, trials = found
    rows = [([show(t.data.params) for show in columns.values()], t.data.metrics) for t in trials]
    rows.sort(key=lambda row: [(len(cell), cell) for cell in row[0]])  # 64 before 128, (x, g) before (x, d, g)
    lines = [
        "| " + " | ".join(columns) + " | final validation loss | std over problems | meta-iterations | best validation (at) |",
        "|---" * (len(columns) + 4) + "|",
    ]
    lines += [
        "| "
        + " | ".join(cells)
        + f" | {m['val_loss']:.4g} | {m['val_loss_std']:.3g} | {m['_step']} | {m['_best']:.4g} ({m['_best_step']}) |"
        for cells, m in rows
    ]
    return "\n".join(lines) + f"\n\n(Each trial's last validation, and its best; MLflow sweep run `{sweep}`.)"


def ablation_block(root: Path, uri: str) -> str:
    hidden = lambda p: p["lsr1.hidden_dim"]  # noqa: E731
    inputs = lambda p: "(" + ", ".join(re.findall(r"[a-z]", p.get("lsr1.encoder_inputs", ""))) + ")"  # noqa: E731
    paper = lambda p: PAPER_TABLE4.get((hidden(p), inputs(p)), "not reported")  # noqa: E731
    return _ablation_table(uri, "ablation.yaml", {"hidden dim": hidden, "encoder inputs": inputs, "paper (Table 4)": paper})


def ablation_step_block(root: Path, uri: str) -> str:
    return _ablation_table(
        uri,
        "ablation_step.yaml",
        {"identity in the step": lambda p: p["lsr1.identity_in_step"], "second-order meta-gradient": lambda p: p["meta.second_order"]},
    )


def sensitivity_block(root: Path, uri: str) -> str:
    return _ablation_table(uri, "sensitivity.yaml", {"λ_sec": lambda p: p["lsr1.lambda_sec"], "γ1": lambda p: p["lsr1.gamma1"]})


def data_efficiency_block(root: Path, uri: str) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    space = "data_efficiency.yaml"
    sweep = _newest_sweep(uri, space)
    if sweep is None:
        return _missing(f"a sweep over tune_spaces/{space} at {uri}", "make experiments")
    client = MlflowClient(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows = _csv(Path(client.download_artifacts(sweep.info.run_id, "comparison/comparison.csv", tmp)), as_dicts=True)
        except (MlflowException, OSError):
            return _missing(f"the test comparison of sweep run {sweep.info.run_id} (it did not finish)", "make experiments")
    trials = [r for r in rows if r.get("hmr.data_fraction")]
    trials.sort(key=lambda r: -float(r["hmr.data_fraction"]))
    lines = [
        "| fraction of the AMASS frames | paper (3DPW) | validation PA-MPJPE (best) | test PA-MPJPE | its initializer alone | test MPJPE |",
        "|---|---|---|---|---|---|",
    ]
    for r in trials:
        fraction = float(r["hmr.data_fraction"])
        lines.append(
            f"| {100 * fraction:g} % | {PAPER_TABLE2.get(fraction, '—')} | {float(r['val_pa_mpjpe']):.1f} | {float(r['test_pa_mpjpe']):.1f} | "
            f"{float(r['test_pa_mpjpe_init']):.1f} | {float(r['test_mpjpe']):.1f} |"
        )
    return "\n".join(lines) + f"\n\n(mm; MLflow sweep run `{sweep.info.run_id}`, its comparison/comparison.csv.)"


def _benchmark(root: Path, name: str) -> dict | None:
    path = root / BENCHMARK_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def runtime_block(root: Path, uri: str) -> str:
    figures = _benchmark(root, "hmr_step")
    if figures is None or "inference" not in figures:
        return _missing(str(BENCHMARK_DIR / "hmr_step.json"), "python -m pipeline.report --run-benchmarks hmr_step")
    paper = {("inference", "256"): "L-SR1 91 ms / 14.60 GiB, LGD 166 ms / 17.81 GiB (RTX 3090)"}
    lines = [
        "| per inner iteration | batch | L-SR1 ms | LGD ms | Adam ms | L-SR1 peak MiB | LGD peak MiB | Adam peak MiB | paper (Table 3) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cell = lambda r, m, key: f"{r[m][key]:.4g}" if m in r else "—"  # noqa: E731
    for kind in ("inference", "training"):
        for batch, r in figures[kind].items():
            label = "inference" if kind == "inference" else "meta-training (per unrolled step)"
            lines.append(
                f"| {label} | {batch} | "
                + " | ".join(cell(r, m, "ms") for m in ("lsr1", "lgd", "adam"))
                + " | "
                + " | ".join(cell(r, m, "peak_mib") for m in ("lsr1", "lgd", "adam"))
                + f" | {paper.get((kind, batch), '')} |"
            )
    return "\n".join(lines) + f"\n\n(`benchmarks/hmr_step.py` on {figures['machine']}.)"


def benchmark_block(name: str) -> Callable[[Path, str], str]:
    """The renderer of block benchmark_<name>: every scalar of benchmarks/results/<name>.json."""

    def render(root: Path, uri: str) -> str:
        figures = _benchmark(root, name)
        if figures is None:
            return _missing(str(BENCHMARK_DIR / f"{name}.json"), f"python -m pipeline.report --run-benchmarks {name}")
        rows = [f"| {key} | {value} |" for key, value in figures.items() if not isinstance(value, (dict, list))]
        return f"| `benchmarks/{name}.py` | last run |\n|---|---|\n" + "\n".join(rows)

    return render


RENDERERS: dict[str, Callable[[Path, str], str]] = {
    "quadratic": quadratic_block,
    "quadratic_models": quadratic_models_block,
    "profiles": profiles_block,
    "bfgs_steps": bfgs_steps_block,
    "hmr_table": hmr_table_block,
    "hmr_official": hmr_official_block,
    "ablation": ablation_block,
    "ablation_step": ablation_step_block,
    "sensitivity": sensitivity_block,
    "data_efficiency": data_efficiency_block,
    "runtime": runtime_block,
}


def renderer(name: str) -> Callable[[Path, str], str] | None:
    """The renderer of block `name`: a named one, or benchmark_<script> for any benchmark's figures."""
    if name.startswith("benchmark_"):
        return benchmark_block(name.removeprefix("benchmark_"))
    return RENDERERS.get(name)


def render_blocks(text: str, root: Path, uri: str, where: str = "results", only: set[str] | None = None) -> str:
    """`text` with every report block rendered anew (see the module doc), or only the blocks named in `only`."""
    opened = re.findall(r"<!-- report:([a-z_]+) -->", text)
    closed = set(re.findall(r"<!-- /report:([a-z_]+) -->", text))
    for name in opened:
        if renderer(name) is None:
            raise ReportError(f"{where}: block {name!r} has no renderer; known: {sorted(RENDERERS)} and benchmark_<script>")
        if name not in closed:
            raise ReportError(f"{where}: block {name!r} is opened but not closed (<!-- /report:{name} -->)")
    unknown = sorted((only or set()) - set(opened))
    if unknown:
        raise ReportError(f"{where}: no block {unknown}; it has {opened}")

    def rendered(m: re.Match[str]) -> str:
        if only is not None and m["name"] not in only:
            return m[0]
        return f"<!-- report:{m['name']} -->\n{renderer(m['name'])(root, uri)}\n<!-- /report:{m['name']} -->"

    return _BLOCK.sub(rendered, text)


def run_benchmark(name: str, root: Path) -> Path:
    """Run benchmarks/<name>.py and save its last line (one JSON object) as benchmarks/results/<name>.json."""
    script = root / "benchmarks" / f"{name}.py"
    if not script.is_file():
        raise ReportError(f"{script}: no such benchmark")
    log.info("running %s", script)
    done = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ReportError(f"{script} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    try:
        figures = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise ReportError(f"{script}: its last line is not one JSON object: {lines[-1][:200]!r}") from None
    out = root / BENCHMARK_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    from pipeline.tracking import tracking_uri

    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--run-benchmarks", nargs="*", default=[], metavar="NAME", help="run these benchmarks/<NAME>.py first and save their figures"
    )
    parser.add_argument("--blocks", nargs="+", default=None, metavar="NAME", help="render only these blocks (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded file otherwise
    root = Path.cwd()
    try:
        for name in args.run_benchmarks:
            run_benchmark(name, root)
        text = args.results.read_text()
        only = set(args.blocks) if args.blocks else None
        args.results.write_text(render_blocks(text, root, tracking_uri(), str(args.results), only))
    except (ReportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    names = sorted(set(_BLOCK.findall(text)) if only is None else only)
    print(f"rewrote the report blocks of {args.results}: {', '.join(names) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
