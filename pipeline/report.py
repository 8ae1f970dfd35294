"""Regenerate the measured tables of docs/results.md: `make report` (or `python -m pipeline.report`).

docs/results.md is prose around blocks that only this command writes, between `<!-- report:NAME -->` and
`<!-- /report:NAME -->`, from what the product's own commands left behind:

    profiles     docs/profiles/distances.csv      `python -m lsr1.profiles --out docs/profiles`
    bfgs_steps   docs/bfgs_steps/iterations.csv   `python -m lsr1.iterations --out docs/bfgs_steps`
    hmr_demo     MLflow: the run `evaluate-demo-comparison` of experiment hmr_demo (`make demo`), its
                 test/curves.json
    ablation     MLflow: the newest sweep over tune_spaces/ablation.yaml (the command is in that file),
                 its trials' final validation loss; ablation_step the same for tune_spaces/ablation_step.yaml
    benchmarks   benchmarks/results/<name>.json    the last line of `benchmarks/<name>.py`, which
                 `--run-benchmarks NAME ...` runs and saves first

A block whose source is missing says so and names the command that makes it; a block without a renderer,
or one that is opened and not closed, is an error naming it.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from lsr1.profiles import ProfileResult, performance_ratios, profile
from pipeline.evaluate import joint_metrics

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


def hmr_demo_block(root: Path, uri: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hmr_demo")
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], "tags.`lsr1.run_name` = 'evaluate-demo-comparison'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        return _missing(f"the MLflow run evaluate-demo-comparison at {uri}", "make demo")
    with tempfile.TemporaryDirectory() as tmp:
        curves = json.loads(Path(client.download_artifacts(runs[0].info.run_id, "test/curves.json", tmp)).read_text())
    pa, mp = joint_metrics(curves[0])
    lines = ["| method | PA-MPJPE (mm) | MPJPE (mm) | its initializer alone: PA-MPJPE / MPJPE |", "|---|---|---|---|"]
    for c in curves:
        start = f"{c[pa][0]:.1f} / {c[mp][0]:.1f}"
        lines.append(f"| {c['name']} | {c[pa][-1]:.1f} | {c[mp][-1]:.1f} | {start} |")
    return "\n".join(lines) + f"\n\n({len(curves[0][pa]) - 1} inner steps; MLflow run `{runs[0].info.run_id}`, {pa.split('_')[-1].upper()} joints.)"


def _sweep_trials(uri: str, space: str) -> tuple[str, list] | None:
    """The newest sweep over tune_spaces/<space> in the store: its run id and its trials' runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    sweeps = [r for r in client.search_runs(experiments, "tags.`lsr1.kind` = 'sweep'", order_by=["attributes.start_time DESC"])
              if Path(r.data.tags.get("lsr1.sweep_space", "")).name == space]  # fmt: skip
    if not sweeps:
        return None
    trials = client.search_runs([sweeps[0].info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweeps[0].info.run_id}'")
    finished = [t for t in trials if "val_loss" in t.data.metrics]
    for t in finished:  # the meta-iteration of the final validation, beside its value
        t.data.metrics["_step"] = max(m.step for m in client.get_metric_history(t.info.run_id, "val_loss"))
    return sweeps[0].info.run_id, finished


def _ablation_table(uri: str, space: str, columns: dict[str, Callable[[dict[str, str]], str]]) -> str:
    """One row per trial of the newest sweep over `space`: the given param columns, the final validation
    loss, its std over problems and the meta-iteration it was taken at."""
    found = _sweep_trials(uri, space)
    if found is None:
        return _missing(f"a sweep over tune_spaces/{space} at {uri}", f"the command in tune_spaces/{space}")
    sweep, trials = found
    rows = [([show(t.data.params) for show in columns.values()], t.data.metrics) for t in trials]
    rows.sort(key=lambda row: [(len(cell), cell) for cell in row[0]])  # 64 before 128, (x, g) before (x, d, g)
    lines = ["| " + " | ".join(columns) + " | validation loss | std over problems | meta-iterations |", "|---" * (len(columns) + 3) + "|"]
    lines += ["| " + " | ".join(cells) + f" | {m['val_loss']:.4g} | {m['val_loss_std']:.3g} | {m['_step']} |" for cells, m in rows]
    return "\n".join(lines) + f"\n\n(Final validation of each trial; MLflow sweep run `{sweep}`.)"


def ablation_block(root: Path, uri: str) -> str:
    inputs = lambda p: "(" + ", ".join(re.findall(r"[a-z]", p.get("lsr1.encoder_inputs", ""))) + ")"  # noqa: E731
    return _ablation_table(uri, "ablation.yaml", {"hidden dim": lambda p: p["lsr1.hidden_dim"], "encoder inputs": inputs})


def ablation_step_block(root: Path, uri: str) -> str:
    return _ablation_table(uri, "ablation_step.yaml", {"identity in the step": lambda p: p["lsr1.identity_in_step"],
                                                       "second-order meta-gradient": lambda p: p["meta.second_order"]})  # fmt: skip


def benchmarks_block(root: Path, uri: str) -> str:
    files = sorted((root / BENCHMARK_DIR).glob("*.json"))
    if not files:
        return _missing(str(root / BENCHMARK_DIR), "make report")
    lines = ["| benchmark | figures (the script's last line) |", "|---|---|"]
    for path in files:
        figures = json.loads(path.read_text())
        cells = ", ".join(f"{k} {v}" for k, v in figures.items() if not isinstance(v, (dict, list)))
        lines.append(f"| `benchmarks/{path.stem}.py` | {cells} |")
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[Path, str], str]] = {
    "profiles": profiles_block,
    "bfgs_steps": bfgs_steps_block,
    "hmr_demo": hmr_demo_block,
    "ablation": ablation_block,
    "ablation_step": ablation_step_block,
    "benchmarks": benchmarks_block,
}


def render_blocks(text: str, root: Path, uri: str, where: str = "results") -> str:
    """`text` with every report block rendered anew (see the module doc)."""
    opened = re.findall(r"<!-- report:([a-z_]+) -->", text)
    closed = set(re.findall(r"<!-- /report:([a-z_]+) -->", text))
    for name in opened:
        if name not in RENDERERS:
            raise ReportError(f"{where}: block {name!r} has no renderer; known: {sorted(RENDERERS)}")
        if name not in closed:
            raise ReportError(f"{where}: block {name!r} is opened but not closed (<!-- /report:{name} -->)")
    return _BLOCK.sub(lambda m: f"<!-- report:{m['name']} -->\n{RENDERERS[m['name']](root, uri)}\n<!-- /report:{m['name']} -->", text)


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
    parser.add_argument("--run-benchmarks", nargs="*", default=[], metavar="NAME", help="run these benchmarks/<NAME>.py first and save their figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path.cwd()
    try:
        for name in args.run_benchmarks:
            run_benchmark(name, root)
        text = args.results.read_text()
        args.results.write_text(render_blocks(text, root, tracking_uri(), str(args.results)))
    except (ReportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"rewrote the report blocks of {args.results}: {', '.join(sorted(set(_BLOCK.findall(text)))) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
