"""What the commands print (docs/design.md §7): one line per phase, a progress bar per training run, then the results.

    setup         logging for a command: everything (ours, Ray's, MLflow's, Python warnings) goes to a log file;
                  the terminal gets the phases, the bars, warnings and errors. --verbose puts every INFO line on
                  the terminal too (and pipeline.train then asks Ray for its workers' output: `log_to_driver`).
    Console       phase(), bar(), result(): on a terminal the bars are redrawn in place, one line per running
                  run; without one (a Ray job's log, a pipe) a bar prints at most one line every BAR_EVERY_S
    ProgressBoard a Ray actor (0 CPUs) that the rank-0 worker of every run tells its iterations and warnings,
                  and that Console.follow polls on the driver: the workers' own output is not shown

Ray's and MLflow's INFO lines (Ray Data execution plans, "Reporting training result ...", "Created version
..."), Ray's session logs and the workers' output stay in the files named at the end. A few warnings that say
nothing to a person (QUIET) go to the log file only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "BAR_EVERY_S",
    "NAMESPACE",
    "Console",
    "ProgressBoard",
    "board_name",
    "forward_warnings",
    "progress_hook",
    "route_library_logs",
    "setup",
]

BAR_EVERY_S = 10.0
NAMESPACE = "lsr1"  # Ray namespace of the progress boards
LIBRARIES = ("ray", "mlflow", "alembic", "matplotlib", "urllib3", "filelock", "fsspec", "py.warnings")
QUIET = re.compile(
    "|".join(
        [
            r"Token authentication is enabled for this Ray cluster",  # RAY_AUTH_MODE's notice, every ray.init
            r"Progress bars disabled",  # Ray Data: we disable its bars ourselves
            r"Saving pytorch model by Pickle or CloudPickle",  # mlflow.pytorch; our commands load best.pt, not pickles
            r"(Ray|SA)?DeprecationWarning|FutureWarning",  # inside the libraries, not in what the user wrote
        ]
    )
)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ProgressBoard:
    """Iterations and warnings of running trainings, keyed by run name (a Ray actor; plain class for --local)."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple[int, int, dict[str, float]]] = {}
        self.messages: list[str] = []

    def update(self, run: str, iteration: int, total: int, figures: dict[str, float]) -> None:
        self.runs[run] = (iteration, total, figures)

    def warn(self, message: str) -> None:
        self.messages.append(message)

    def poll(self) -> tuple[dict[str, tuple[int, int, dict[str, float]]], list[str]]:
        messages, self.messages = self.messages, []
        return dict(self.runs), messages


def board_name(run: str) -> str:
    return f"progress-{run}"


def progress_hook(report: Any, name: str, total: int, select_metric: str) -> Any:
    """An `on_iteration(iteration, metrics)` that calls report(name, iteration, total, figures): the loss, and
    from the first validation on the selection metric and its best value so far."""
    best: dict[str, float] = {}

    def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
        figures = {"loss": metrics["loss"]}
        if select_metric in metrics:
            best["value"] = min(best.get("value", float("inf")), metrics[select_metric])
            best["last"] = metrics[select_metric]
        if best:
            figures |= {select_metric: best["last"], "best": best["value"]}
        report(name, iteration, total, figures)

    return on_iteration


class _Bar:
    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.iteration, self.figures = name, total, 0, {}
        self.start, self.printed = time.monotonic(), 0.0

    def text(self, tty: bool) -> str:
        figures = ", ".join(f"{k} {v:.4g}" for k, v in self.figures.items()) or "starting"
        elapsed = f"{time.monotonic() - self.start:.0f} s"
        if tty:
            done = int(20 * self.iteration / max(self.total, 1))
            return f"{self.name}  {'█' * done}{'·' * (20 - done)}  {self.iteration}/{self.total}  {figures}  {elapsed}"
        return f"{self.name}: {self.iteration}/{self.total} iterations, {figures}, {elapsed}"


class Console:
    """The terminal side of a command (see the module doc); thread-safe, so that a poller can draw bars."""

    def __init__(self, stream: TextIO | None = None, file_handler: logging.Handler | None = None, verbose: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.file_handler, self.verbose = file_handler, verbose
        self.log_path = Path(file_handler.baseFilename) if isinstance(file_handler, logging.FileHandler) else None
        self.bars: dict[str, _Bar] = {}
        self.closed: set[str] = set()  # runs whose bar became a line: late reports do not bring it back
        self.drawn, self.drawn_at = 0, 0.0  # lines of bars on the terminal now, and when they were drawn
        self.lock = threading.RLock()

    # lines
    def phase(self, text: str) -> None:
        """One line saying what the command does now."""
        self._line(f"{time.strftime('%H:%M:%S')} {text}", logged=text)

    def result(self, text: str = "") -> None:
        """Results (tables, where things are): printed as they are."""
        for line in text.splitlines() or [""]:
            self._line(line)

    def _line(self, text: str, logged: str | None = None) -> None:
        with self.lock:
            self._clear()
            print(text, file=self.stream, flush=True)
            self._draw()
        if self.file_handler is not None:
            record = {"name": "console", "levelno": logging.INFO, "levelname": "INFO", "msg": text if logged is None else logged}
            self.file_handler.handle(logging.makeLogRecord(record))

    # bars
    def bar(self, name: str, iteration: int, total: int, figures: dict[str, float]) -> None:
        """Create or move the bar of run `name`."""
        with self.lock:
            if name in self.closed:
                return
            bar = self.bars.setdefault(name, _Bar(name, total))
            bar.iteration, bar.total, bar.figures = iteration, total, figures
            if self.tty and time.monotonic() - self.drawn_at >= 0.1:  # redrawn ten times a second at most
                self._clear()
                self._draw()
            elif time.monotonic() - bar.printed >= BAR_EVERY_S:
                bar.printed = time.monotonic()
                print(bar.text(False), file=self.stream, flush=True)

    def close_bar(self, name: str, note: str = "") -> None:
        """The bar's last state as a permanent line."""
        with self.lock:
            bar = self.bars.pop(name, None)
            self.closed.add(name)
            if bar is not None:
                self._line(bar.text(False) + (f" ({note})" if note else ""))

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\r" + "\x1b[1A" * (self.drawn - 1) + "\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        if self.tty and self.bars:
            self.stream.write("\n".join(bar.text(True) for bar in self.bars.values()))
            self.stream.flush()
            self.drawn, self.drawn_at = len(self.bars), time.monotonic()

    @contextlib.contextmanager
    def follow(self, name: str, every: float = 0.5) -> Iterator[None]:
        """While the block runs, a ProgressBoard actor named `name` (0 CPUs, in NAMESPACE) that training ranks
        report to, and the bars of its runs drawn here; the actor is killed at the end."""
        import ray

        board = ray.remote(num_cpus=0)(ProgressBoard).options(name=name, namespace=NAMESPACE, get_if_exists=True).remote()
        stop, seen = threading.Event(), set()

        def poll() -> None:
            runs, messages = ray.get(board.poll.remote(), timeout=30)
            for message in messages:  # every rank says it, maybe every iteration: once is enough
                if message not in seen:
                    seen.add(message)
                    logging.getLogger("worker").warning(message)
            for name, (iteration, total, figures) in runs.items():
                if self.bars.get(name) is None or self.bars[name].iteration != iteration:
                    self.bar(name, iteration, total, figures)

        def loop() -> None:
            while not stop.wait(every):
                with contextlib.suppress(ray.exceptions.RayError):
                    poll()

        thread = threading.Thread(target=loop, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(ray.exceptions.RayError):
                poll()
            for run in list(self.bars):
                self.close_bar(run)
            ray.kill(board)


class _ConsoleHandler(logging.StreamHandler):
    """Warnings and errors (every INFO line with --verbose) on stderr, below the bars."""

    def __init__(self, console: Console) -> None:
        super().__init__(sys.stderr)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        with self.console.lock:
            self.console._clear()
            super().emit(record)
            self.console._draw()


class _NotQuiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not QUIET.search(record.getMessage())


def route_library_logs() -> None:
    """Ray, Ray Data, MLflow and alembic attach their own terminal handlers: take those off, so that their
    records reach ours (the log file; the terminal only at WARNING). Again after `import ray.data`."""
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in {n.split(".")[0] for n in LIBRARIES}:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):  # their terminal handlers; Ray Data's file handler stays
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    logger.removeHandler(handler)
            logger.propagate = True


def setup(log_path: Path | None, verbose: bool = False) -> Console:
    """Logging for a command (see the module doc); returns its Console."""
    file_handler = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_path, mode="a")
        file_handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        file_handler.setLevel(logging.INFO)  # Ray Data's logger passes DEBUG records on
    console = Console(file_handler=file_handler, verbose=verbose)
    root = logging.getLogger()
    for handler in list(root.handlers):  # an earlier command's in this process (tests call several mains)
        if getattr(handler, "lsr1_console", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.INFO)
    terminal = _ConsoleHandler(console)
    terminal.setLevel(logging.INFO if verbose else logging.WARNING)
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        terminal.addFilter(_NotQuiet())
    for handler in (file_handler, terminal):
        if handler is not None:
            handler.lsr1_console = True
            root.addHandler(handler)
    logging.captureWarnings(True)
    route_library_logs()
    return console


def forward_warnings(board: Any) -> None:
    """On a Ray Train worker: its warnings and errors (and Python warnings) also go to the driver's board."""

    class _ToBoard(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not QUIET.search(record.getMessage()):
                board.warn.remote(f"{record.levelname} {record.name} (a worker): {record.getMessage()}")

    handler = _ToBoard(logging.WARNING)
    logging.getLogger().addHandler(handler)
    logging.captureWarnings(True)
