"""Training commands: ``train`` (here, or queued with --submit) and the ``training`` group."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from audioset_batch.cli.common import cli_settings, friendly_errors, main

# --- training and evaluation -----------------------------------------------------------------


@main.command()
@click.argument("data", nargs=-1)
@click.option(
    "--submit",
    "spec_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Queue the run described by this YAML file on the `training` queue instead of training here.",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Class list CSV (index,mid,display_name); default: the shipped model's 527 AudioSet classes.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder: checkpoints, and the artifact in <output>/model. Re-run to resume.",
)
@click.option(
    "--validation",
    "validation_data",
    multiple=True,
    help="Labelled HDF5 file(s) (paths or URLs) to select checkpoints on, instead of holding out a split: "
    "every clip of DATA is then trained on.",
)
@click.option("--architecture", default="decision_level_multi_attention", show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=4000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Decoupled weight decay (AdamW): each step shrinks every weight by learning-rate x this; 0 = off.",
)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True)
@click.option(
    "--hidden-units", type=click.IntRange(min=1), default=1024, show_default=True, help="Width of each branch."
)
@click.option(
    "--branches",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Independent copies trained side by side and served as their mean (an ensemble in one model).",
)
@click.option(
    "--ema-decay",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Evaluate and keep an exponential moving average of the weights (e.g. 0.999); 0 = off.",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    help="Distil from this model artifact (repeat for an ensemble): their mean prediction is a soft target.",
)
@click.option(
    "--distill-weight",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the soft targets (--teacher or --cross-fit) against the labels.",
)
@click.option(
    "--cross-fit",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Train K fold models first; each clip's out-of-fold prediction becomes its soft target. 0 = off.",
)
@click.option(
    "--fold-hidden-units",
    type=click.IntRange(min=1),
    default=None,
    help="Width of the --cross-fit fold models (default: --hidden-units): a wide model can learn from narrower folds.",
)
@click.option(
    "--mixup",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Mixup on embeddings with Beta(ALPHA, ALPHA) weights (e.g. 0.3); 0 = off.",
)
@click.option(
    "--frame-mix",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Splice clips: up to this share of each clip's frames come from another clip in the batch; 0 = off.",
)
@click.option(
    "--frame-mix-targets",
    type=click.Choice(["share", "union"]),
    default="share",
    show_default=True,
    help="Targets of a spliced clip: blended by frame share, or the union of both label sets.",
)
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Pull the 0/1 targets towards 0.5 by this amount (e.g. 0.1); 0 = off.",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "cosine"]),
    default="constant",
    show_default=True,
    help="cosine: decay the learning rate to 1% of --learning-rate over --iterations.",
)
@click.option("--sampling", type=click.Choice(["balanced", "shuffle"]), default="balanced", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Training arithmetic. bfloat16: mixed precision (float32 weights), about 1.5x faster on CPUs with "
    "avx512_bf16/AMX; validation and the artifact stay float32.",
)
@click.option(
    "--validation-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True
)
@click.option("--eval-every", type=click.IntRange(min=1), default=250, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Stop after this many evaluations in a row without a better validation mAP; 0 = run all iterations.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--split-seed",
    type=int,
    default=None,
    help="Seed of the validation hold-out (default: --seed). Keep it fixed to compare runs or distil between them.",
)
@click.option("--name", default="audioset-model", show_default=True)
@click.option("--version", "model_version", default="1", show_default=True)
@friendly_errors
def train(
    data: tuple[str, ...],
    spec_path: Path | None,
    labels_path: Path | None,
    output: Path | None,
    validation_data: tuple[str, ...],
    architecture: str,
    iterations: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    dropout: float,
    hidden_units: int,
    branches: int,
    ema_decay: float,
    teachers: tuple[str, ...],
    distill_weight: float,
    cross_fit: int,
    fold_hidden_units: int | None,
    mixup: float,
    frame_mix: float,
    frame_mix_targets: str,
    label_smoothing: float,
    lr_schedule: str,
    sampling: str,
    precision: str,
    validation_fraction: float,
    eval_every: int,
    patience: int,
    seed: int,
    split_seed: int | None,
    name: str,
    model_version: str,
) -> None:
    """Train a model on labelled HDF5 files (paths or bucket URLs), or queue a run with --submit."""
    settings = cli_settings()
    if spec_path is not None:
        from audioset_batch.jobs import open_job_store
        from audioset_batch.training_runs import load_spec, submit
        from worker.app import make_app
        from worker.config import TRAINING_QUEUE

        run_id = submit(
            load_spec(spec_path), make_app(settings), open_job_store(settings.effective_state_url), TRAINING_QUEUE
        )
        click.echo(run_id)
        click.echo(f"queued on '{TRAINING_QUEUE}'; follow it with: audioset training monitor {run_id}", err=True)
        return
    if not data or output is None:
        raise click.UsageError("give DATA files and --output (or --submit SPEC.yml)")
    from tqdm import tqdm

    from audioset_batch.datasets import load_dataset
    from model.architectures import ARCHITECTURES
    from model.artifact import read_manifest
    from model.labels import load_labels
    from model.training import Progress, TrainConfig
    from model.training import train as run_training

    if architecture not in ARCHITECTURES:
        raise click.BadParameter(f"choose one of {', '.join(ARCHITECTURES)}", param_hint="--architecture")
    if settings.tf_threads:
        from worker.runtime import configure_tensorflow

        configure_tensorflow(settings.tf_threads)
    labels = load_labels(labels_path) if labels_path else read_manifest(settings.model_path).classes
    dataset = load_dataset(list(data), settings)
    held_out = load_dataset(list(validation_data), settings) if validation_data else None
    config = TrainConfig(
        architecture=architecture,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        iterations=iterations,
        dropout=dropout,
        hidden_units=hidden_units,
        branches=branches,
        ema_decay=ema_decay,
        teachers=list(teachers),
        distill_weight=distill_weight,
        cross_fit=cross_fit,
        fold_hidden_units=fold_hidden_units,
        mixup=mixup,
        frame_mix=frame_mix,
        frame_mix_targets=frame_mix_targets,
        label_smoothing=label_smoothing,
        lr_schedule=lr_schedule,
        balanced=sampling == "balanced",
        precision=precision,
        validation_fraction=validation_fraction,
        eval_every=eval_every,
        checkpoint_every=eval_every,
        patience=patience,
        seed=seed,
        split_seed=split_seed,
        name=name,
        version=model_version,
    )
    bar = tqdm(total=iterations, desc="train", unit="it", file=sys.stderr)
    last_map: list[float] = []
    stage = [""]

    def progress(p: Progress) -> None:
        if p.stage != stage[0]:  # cross-fitting: one bar pass per fold, then the model itself
            stage[0] = p.stage
            last_map.clear()
            bar.reset(total=iterations)
            bar.set_description(p.stage or "train")
        if p.validation_map is not None:
            last_map.append(p.validation_map)
        bar.n = p.iteration
        bar.set_postfix(loss=f"{p.loss:.4f}", val_mAP=f"{last_map[-1]:.4f}" if last_map else "-", refresh=False)
        bar.refresh()

    result = run_training(
        config,
        dataset.x,
        dataset.y,
        labels,
        output,
        on_progress=progress,
        data_description=", ".join(dataset.sources),
        validation=(held_out.x, held_out.y) if held_out else None,
        validation_description=", ".join(held_out.sources) if held_out else "",
    )
    bar.close()
    click.echo(
        json.dumps(
            {
                "artifact": str(result.artifact),
                "best_iteration": result.best_iteration,
                "validation_map": result.best_map,
                "iterations_run": result.iterations_run,
                "stopped_early": result.stopped_early,
            }
        )
    )


@main.group()
def training() -> None:
    """Queued training runs: list, show, monitor."""


def _run_line(run: dict[str, Any]) -> str:
    best = run.get("best_map")
    return (
        f"{run['id']}  {run.get('status', '?'):9}  {run['stage'] + ' ' if run.get('stage') else ''}"
        f"it {run.get('iteration', 0)}/{run.get('iterations', '?')}"
        f"  loss {run.get('loss', float('nan')):.4f}  val mAP {'-' if best is None else f'{best:.4f}'}"
        f"{'  -> ' + run['artifact'] if run.get('artifact') else ''}"
        f"{'  error: ' + run['error'] if run.get('error') else ''}"
    )


@training.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def training_list(limit: int, as_json: bool) -> None:
    """List the newest queued training runs: status, iteration, loss, validation mAP."""
    from audioset_batch.jobs import open_job_store

    runs = open_job_store(cli_settings().effective_state_url).list_runs(limit)
    if as_json:
        click.echo(json.dumps({"runs": runs}))
        return
    for run in runs:
        click.echo(_run_line(run))


@training.command("show")
@click.argument("run_id")
@friendly_errors
def training_show(run_id: str) -> None:
    """Print a training run's full record as JSON, including where its artifact landed."""
    from audioset_batch.jobs import open_job_store

    run = open_job_store(cli_settings().effective_state_url).get_run(run_id)
    click.echo(json.dumps(run, indent=2, default=str))


@training.command("monitor")
@click.argument("run_id")
@click.option("--interval", type=float, default=2.0, show_default=True)
@friendly_errors
def training_monitor(run_id: str, interval: float) -> None:
    """Follow a run until it completes or fails; exit 1 if it failed."""
    from tqdm import tqdm

    from audioset_batch.jobs import open_job_store

    store = open_job_store(cli_settings().effective_state_url)
    run = store.get_run(run_id)
    bar = tqdm(total=run.get("iterations") or 0, desc=run_id, unit="it", file=sys.stderr)
    while True:
        run = store.get_run(run_id)
        bar.total = run.get("iterations") or bar.total
        bar.n = int(run.get("iteration") or 0)
        best = run.get("best_map")
        bar.set_postfix(
            status=run.get("status"),
            loss=f"{run.get('loss', float('nan')):.4f}",
            val_mAP="-" if best is None else f"{best:.4f}",
            refresh=False,
        )
        bar.refresh()
        if run.get("status") in {"completed", "failed"}:
            break
        time.sleep(interval)
    bar.close()
    click.echo(_run_line(run))
    sys.exit(0 if run["status"] == "completed" else 1)
