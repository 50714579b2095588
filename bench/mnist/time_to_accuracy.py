"""Benchmark: wall time to 99.2% MNIST test accuracy, seed recipe vs fast recipe, on this CPU.

Also, unless --strong-seeds is empty, the strong recipe's final test accuracy for each seed,
the seeds trained at once in separate processes (the target is a median of >= 99.70% over
3 seeds). Writes mnist-bench.json and mnist-bench.png into --out (default docs/) after
every stage, so an interrupted benchmark still leaves what it measured.

Usage (from the repository root, with the package installed):
    python bench/mnist/time_to_accuracy.py --data-dir /opt/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from matplotlib.figure import Figure
from mnist_workspace.config import RECIPES, TrainConfig

from mnist_workspace import data, train

TARGET = 0.992


class TimeToAccuracy(keras.callbacks.Callback):
    """Checks test accuracy after each epoch, with the checking time left off the clock,
    and stops training once the target is reached unless `keep_going`."""

    def __init__(
        self, x_test: np.ndarray, y_test: np.ndarray, target: float, keep_going: bool
    ) -> None:
        super().__init__()
        self.x_test, self.y_test, self.target = x_test, y_test, target
        self.keep_going = keep_going
        # (wall seconds, CPU seconds of this process, test accuracy) after each epoch
        self.curve: list[tuple[float, float, float]] = []
        self.seconds_to_target: float | None = None
        self.cpu_seconds_to_target: float | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.paused = self.cpu_paused = 0.0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        elapsed = time.perf_counter() - self.start - self.paused
        cpu = time.process_time() - self.cpu_start - self.cpu_paused
        pause, cpu_pause = time.perf_counter(), time.process_time()
        _, accuracy = self.model.evaluate(self.x_test, self.y_test, batch_size=1000, verbose=0)
        self.paused += time.perf_counter() - pause
        self.cpu_paused += time.process_time() - cpu_pause
        self.curve.append((round(elapsed, 2), round(cpu, 2), float(accuracy)))
        print(
            f"  epoch {epoch + 1}: {elapsed:7.1f} s wall {cpu:7.1f} s CPU  "
            f"test accuracy {accuracy:.4f}",
            flush=True,
        )
        if accuracy >= self.target and self.seconds_to_target is None:
            self.seconds_to_target = round(elapsed, 2)
            self.cpu_seconds_to_target = round(cpu, 2)
            self.model.stop_training = not self.keep_going


def time_to_target(
    name: str, overrides: dict[str, Any], mnist: data.Mnist, workdir: Path, keep_going: bool
) -> dict[str, Any]:
    config = TrainConfig.from_dict(
        {**overrides, "model_path": str(workdir / f"{name}.keras"), "verbose": 0}
    )
    print(f"{name}: {overrides}", flush=True)
    splits = data.split(mnist, config.validation_fraction, config.seed, config.subset)
    assert splits.y_test is not None
    probe = TimeToAccuracy(splits.x_test, splits.y_test, TARGET, keep_going)
    metrics = train.run(config, mnist=mnist, callbacks=[probe]).metrics
    return {
        "config": overrides,
        "curve": probe.curve,
        "seconds_to_target": probe.seconds_to_target,
        "cpu_seconds_to_target": probe.cpu_seconds_to_target,
        "epochs_run": metrics["epochs"],
        "final_test_accuracy": metrics["test_accuracy"],
    }


def strong_accuracies(
    seeds: list[int], epochs: int, data_dir: str | None, extra: list[str], workdir: Path
) -> list[dict[str, Any]]:
    """Train the strong recipe for every seed at once, one process per seed with the cores
    split between them: on a small CPU, separate processes keep every core busy where one
    TensorFlow process often does not (docs/mnist-workspace.md)."""
    threads = max(1, (os.cpu_count() or 1) // len(seeds))
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"}
    running = {}
    for seed in seeds:
        command = [
            *(sys.executable, "-m", "mnist_workspace.train", "--recipe", "strong"),
            *("--seed", str(seed), "--epochs", str(epochs), "--verbose", "2"),
            *("--json", str(workdir / f"strong-{seed}.json")),
            *("--model-path", str(workdir / f"strong-{seed}.keras")),
            *(["--data-dir", data_dir] if data_dir else []),
            *extra,
        ]
        print(f"strong seed {seed}, {threads} thread(s): {' '.join(command[2:])}", flush=True)
        with (workdir / f"strong-{seed}.log").open("w") as log:
            running[seed] = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    runs = []
    try:
        for seed, process in running.items():
            if process.wait() != 0:
                log_tail = (workdir / f"strong-{seed}.log").read_text().splitlines()[-5:]
                raise RuntimeError(
                    f"strong seed {seed} exited {process.returncode}:\n" + "\n".join(log_tail)
                )
            metrics = json.loads((workdir / f"strong-{seed}.json").read_text())
            runs.append(
                {
                    "seed": seed,
                    "epochs": metrics["epochs"],
                    "test_accuracy": metrics["test_accuracy"],
                    "wall_seconds": metrics["wall_seconds"],
                    "threads": threads,
                }
            )
    finally:  # one seed failed or the benchmark was interrupted: stop the other trainings
        for process in running.values():
            if process.poll() is None:
                process.terminate()
                process.wait()
    return runs


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def plot(results: dict[str, Any], path: Path) -> None:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name in ("seed", "fast"):
        if name in results["time_to_accuracy"]:
            curve = np.array(results["time_to_accuracy"][name]["curve"])
            ax.plot(curve[:, 0], 100 * curve[:, 2], marker="o", label=f"{name} recipe")
    ax.axhline(100 * TARGET, color="gray", linestyle="--", label="99.2% target")
    ax.set(xlabel="training wall time on this CPU (s)", ylabel="test accuracy (%)")
    ax.set_ylim(97.0, 100.0)
    ax.set_title(
        f"MNIST time to {100 * TARGET:.1f}% test accuracy ({results['machine']['cpus']} CPUs)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--data-dir", help="MNIST folder (default $MNIST_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where JSON/PNG go")
    parser.add_argument("--seed-max-epochs", type=int, default=15, help="give up after this")
    parser.add_argument(
        "--seed-all-epochs",
        action="store_true",
        help="train the seed recipe for all its epochs (its final accuracy is the report's figure)",
    )
    parser.add_argument("--strong-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--strong-epochs", type=int, default=RECIPES["strong"]["epochs"])
    parser.add_argument(
        "--strong-options",
        default="",
        help="more mnist-train options for the strong runs, e.g. ='--ema --mixed-precision'",
    )
    args = parser.parse_args()
    strong_options = shlex.split(args.strong_options)
    train.parse_args(["--recipe", "strong", *strong_options])  # a typo stops here, not later
    try:
        mnist = data.load(args.data_dir)
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": cpu_model(),
            "python": platform.python_version(),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
        },
        "target": TARGET,
        "time_to_accuracy": {},
        "strong": {"runs": []},
    }

    def save() -> None:
        (args.out / "mnist-bench.json").write_text(json.dumps(results, indent=2) + "\n")
        plot(results, args.out / "mnist-bench.png")

    recipes = {
        "seed": {**RECIPES["seed"], "epochs": args.seed_max_epochs},
        "fast": RECIPES["fast"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in recipes.items():
            keep_going = name == "seed" and args.seed_all_epochs
            results["time_to_accuracy"][name] = time_to_target(
                name, overrides, mnist, Path(tmp), keep_going
            )
            save()
        seed_s = results["time_to_accuracy"]["seed"]["seconds_to_target"]
        fast_s = results["time_to_accuracy"]["fast"]["seconds_to_target"]
        results["speedup"] = round(seed_s / fast_s, 2) if seed_s and fast_s else None
        seed_cpu = results["time_to_accuracy"]["seed"]["cpu_seconds_to_target"]
        fast_cpu = results["time_to_accuracy"]["fast"]["cpu_seconds_to_target"]
        results["cpu_speedup"] = round(seed_cpu / fast_cpu, 2) if seed_cpu and fast_cpu else None
        save()
        print(f"time to {TARGET:.1%}: seed {seed_s} s, fast {fast_s} s, ratio {results['speedup']}")
        print(f"CPU time: seed {seed_cpu} s, fast {fast_cpu} s, ratio {results['cpu_speedup']}")
        if args.strong_seeds:
            try:
                runs = strong_accuracies(
                    args.strong_seeds, args.strong_epochs, args.data_dir, strong_options, Path(tmp)
                )
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            accuracies = [run["test_accuracy"] for run in runs]
            median = statistics.median(accuracies)
            results["strong"] = {
                "options": strong_options,
                "runs": runs,
                "median_test_accuracy": median,
            }
            save()
            print(f"strong accuracies: {accuracies}, median {median}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
