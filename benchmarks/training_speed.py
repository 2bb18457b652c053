"""Training speed (iterations per second) of an artifact's recipe, per member for an ensemble."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact import Manifest
from model.labels import ClassLabel

Recipe = tuple[str, int, int]  # architecture, hidden units, branches


def training_recipes(manifest: Manifest) -> dict[str, Recipe]:
    """What ``audioset train`` would run again: the model's own network, or each member's for an ensemble."""
    from model.ensemble import trained_parts

    return {part.tag: (part.architecture, part.hidden_units, part.branches) for part in trained_parts(manifest)}


def training_speed(recipe: Recipe, classes: list[ClassLabel], iterations: int, precision: str, folder: Path) -> float:
    """Iterations per second of a recipe (batches of 500, EMA, weight decay), after warm-up."""
    from model.train_config import TrainConfig
    from model.training import Progress, train

    architecture, hidden_units, branches = recipe
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4000, 10, 128), dtype=np.uint8)
    y = rng.random((4000, len(classes))) < 0.005
    y[np.arange(4000), rng.integers(0, len(classes), 4000)] = True
    warmup = 3
    config = TrainConfig(
        architecture=architecture,
        hidden_units=hidden_units,
        branches=branches,
        batch_size=500,
        iterations=warmup + iterations,
        eval_every=warmup + iterations,
        checkpoint_every=warmup + iterations,
        ema_decay=0.998,
        weight_decay=0.1,
        precision=precision,
        compile_forms=False,  # the speed of training, not of compiling the artifact it publishes
    )
    marks: dict[int, float] = {}

    def mark(p: Progress) -> None:
        if p.iteration in (warmup, warmup + iterations):
            marks[p.iteration] = time.perf_counter()

    train(config, x, y, classes, folder, on_progress=mark)
    # The last iteration's mark follows its evaluation and checkpoint; with many iterations that cost is small.
    return iterations / (marks[warmup + iterations] - marks[warmup])


def training_report(manifest: Manifest, iterations: int, tmp: Path) -> dict[str, Any]:
    """Training speed in float32 and (where the CPU has it) bfloat16, by tag: one shape for one model or many."""
    from model.inference import cpu_supports_bfloat16

    classes = manifest.classes
    reports: dict[str, dict[str, Any]] = {}
    for index, (tag, recipe) in enumerate(training_recipes(manifest).items()):
        fp32 = training_speed(recipe, classes, iterations, "float32", tmp / f"train-{index}-float32")
        report: dict[str, Any] = {"float32_iterations_per_second": round(fp32, 2)}
        if cpu_supports_bfloat16():
            bf16 = training_speed(recipe, classes, iterations, "bfloat16", tmp / f"train-{index}-bfloat16")
            report["bfloat16_iterations_per_second"] = round(bf16, 2)
            report["bfloat16_speedup"] = round(bf16 / fp32, 2)
        else:
            report["bfloat16"] = {"skipped": "no avx512_bf16/AMX on this CPU"}
        reports[tag] = report
    return {"members": reports}
