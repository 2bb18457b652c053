"""Training commands: ``train`` (here, or queued with --submit) and the ``training`` group."""

from __future__ import annotations

import json
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from audioset_batch.settings import Settings
from cli.common import (
    LocalPath,
    ModelPath,
    json_option,
    main,
    note,
    open_jobs,
    progress_bar,
    quiet_option,
)
from model.choices import COMBINES
from model.train_config import TrainConfig, TrainConfigError, bounds

if TYPE_CHECKING:
    from model.choices import Combine

F = TypeVar("F", bound=Callable[..., Any])


def _choices(kind: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` annotation (also inside ``X | None``), or () for any other type."""
    if typing.get_origin(kind) is typing.Literal:
        return tuple(typing.get_args(kind))
    return next((c for arg in typing.get_args(kind) if (c := _choices(arg))), ())


def _click_type(kind: Any, limits: dict[str, Any]) -> Any:
    """click's type for a number or text field, with its limits as a range."""
    types = typing.get_args(kind) or (kind,)  # int | None -> (int, NoneType)
    base = int if int in types else float if float in types else str
    if base is str or not limits:
        return base
    return (click.IntRange if base is int else click.FloatRange)(**limits)


def train_options(command: F) -> F:
    """One option per :class:`TrainConfig` field, named, typed, checked and explained by the field itself."""
    for name, info in reversed(TrainConfig.model_fields.items()):
        extra: dict[str, Any] = info.json_schema_extra or {}  # type: ignore[assignment]
        if extra.get("hidden"):
            continue
        flag = extra.get("flag") or "--" + name.replace("_", "-")
        default = info.get_default(call_default_factory=True)
        kwargs: dict[str, Any] = {"help": info.description or None, "show_default": default not in (None, [])}
        if "values" in extra:
            kwargs["type"] = click.Choice(list(extra["values"]))
            kwargs["default"] = next(k for k, v in extra["values"].items() if v == default)
        elif choices := _choices(info.annotation):
            kwargs["type"], kwargs["default"] = click.Choice(list(choices)), default
        elif typing.get_origin(info.annotation) is list:
            kwargs["multiple"] = True
        else:
            b = bounds(info)
            limits = {
                **({"min": b.get("ge", b.get("gt"))} if {"ge", "gt"} & set(b) else {}),
                **({"max": b.get("le", b.get("lt"))} if {"le", "lt"} & set(b) else {}),
                **({"min_open": True} if "gt" in b else {}),
                **({"max_open": True} if "lt" in b else {}),
            }
            kwargs["type"], kwargs["default"] = _click_type(info.annotation, limits), default
        command = click.option(flag, name, **kwargs)(command)
    return command


def config_from_options(options: dict[str, Any]) -> TrainConfig:
    """The run's :class:`TrainConfig` from the parsed options (a bad combination is a usage error)."""
    values: dict[str, Any] = {}
    for name, info in TrainConfig.model_fields.items():
        if name not in options:
            continue
        extra: dict[str, Any] = info.json_schema_extra or {}  # type: ignore[assignment]
        value = options[name]
        values[name] = (
            extra["values"][value] if "values" in extra else list(value) if isinstance(value, tuple) else value
        )
    values["checkpoint_every"] = values.get("eval_every", TrainConfig().eval_every)
    try:
        return TrainConfig(**values)
    except TrainConfigError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.argument("data", nargs=-1)
@click.option(
    "--submit",
    "spec_path",
    type=LocalPath(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Queue the run described by this YAML file on the `training` queue instead of training here.",
)
@click.option(
    "--labels",
    "labels_path",
    type=LocalPath(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Class list CSV (index,mid,display_name); default: the shipped model's 527 AudioSet classes.",
)
@click.option(
    "--output",
    type=LocalPath(file_okay=False, path_type=Path),
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
@train_options
@quiet_option
@click.pass_obj
def train(
    settings: Settings,
    /,
    data: tuple[str, ...],
    spec_path: Path | None,
    labels_path: Path | None,
    output: Path | None,
    validation_data: tuple[str, ...],
    quiet: bool,
    **options: Any,
) -> None:
    """Train a model on labelled HDF5 files (paths or bucket URLs), or queue a run with --submit."""
    if spec_path is not None:
        from audioset_batch.training.runs import load_spec, submit
        from worker.app import make_app
        from worker.config import TRAINING_QUEUE

        run_id = submit(load_spec(spec_path), make_app(settings), open_jobs(settings), TRAINING_QUEUE)
        click.echo(run_id)
        note(f"queued on '{TRAINING_QUEUE}'; follow it with: audioset training monitor {run_id}")
        return
    if not data or output is None:
        raise click.UsageError("give DATA files and --output (or --submit SPEC.yml)")
    from audioset_batch.training.datasets import load_training_data
    from audioset_batch.training.trainer import train_on
    from model.soft_targets import fold_config
    from model.training import Progress

    config = config_from_options(options)  # checked before any data loads
    if settings.tf_threads:
        from model.tf_setup import configure_tensorflow

        configure_tensorflow(settings.tf_threads)
    loaded = load_training_data(list(data), list(validation_data), labels_path, settings)
    bar = progress_bar(config.iterations, "train", "it", quiet)
    fold_iterations = fold_config(config).iterations
    last_map: list[float] = []
    stage = [""]

    def progress(p: Progress) -> None:
        if p.stage != stage[0]:  # cross-fitting: one bar pass per fold, then the model itself
            stage[0] = p.stage
            last_map.clear()
            bar.reset(total=fold_iterations if p.stage else config.iterations)
            bar.set_description(p.stage or "train")
        if p.validation_map is not None:
            last_map.append(p.validation_map)
        bar.n = p.iteration
        bar.set_postfix(loss=f"{p.loss:.4f}", val_mAP=f"{last_map[-1]:.4f}" if last_map else "-", refresh=False)
        bar.refresh()

    result = train_on(config, loaded, output, progress)
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
@json_option
@click.pass_obj
def training_list(settings: Settings, limit: int, as_json: bool) -> None:
    """List the newest queued training runs: status, iteration, loss, validation mAP."""
    from audioset_batch.settings import mask_url
    from audioset_batch.training.runs import observed

    store = open_jobs(settings)
    runs = [observed(store, run) for run in store.list_runs(limit)]
    if as_json:
        click.echo(json.dumps({"runs": runs}))
        return
    if not runs:
        note(
            f"no training runs in {mask_url(settings.effective_state_url)} "
            "(queue one with `audioset train --submit SPEC.yml`)"
        )
    for run in runs:
        click.echo(_run_line(run))


@training.command("show")
@click.argument("run_id")
@click.pass_obj
def training_show(settings: Settings, run_id: str) -> None:
    """Print a training run's full record as JSON, including where its artifact landed."""
    from audioset_batch.training.runs import observed

    store = open_jobs(settings)
    click.echo(json.dumps(observed(store, store.get_run(run_id)), indent=2, default=str))


@training.command("monitor")
@click.argument("run_id")
@click.option("--interval", type=float, default=2.0, show_default=True)
@quiet_option
@click.pass_obj
def training_monitor(settings: Settings, run_id: str, interval: float, quiet: bool) -> None:
    """Follow a run until it completes, fails or is lost (its worker stopped); exit 1 unless it completed."""
    from audioset_batch.training.runs import observed

    store = open_jobs(settings)
    run = store.get_run(run_id)
    bar = progress_bar(run.get("iterations") or 0, run_id, "it", quiet)
    while True:
        run = observed(store, store.get_run(run_id))
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
        if run.get("status") in {"completed", "failed", "lost"}:
            break
        time.sleep(interval)
    bar.close()
    click.echo(_run_line(run))
    sys.exit(0 if run["status"] == "completed" else 1)


@main.command()
@click.argument("members", nargs=-1, required=True, type=ModelPath())
@click.option(
    "--output",
    type=LocalPath(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the combined artifact to (model.keras + manifest.json).",
)
@click.option("--name", default="audioset-ensemble", show_default=True, help="Model name written into results.")
@click.option("--version", "version", default="1", show_default=True, help="Model version written into results.")
@click.option(
    "--validation",
    "validation_data",
    multiple=True,
    help="Labelled HDF5 file(s) (paths or URLs) to evaluate the ensemble on; the manifest records the result.",
)
@click.option(
    "--combine",
    "method",
    type=click.Choice(COMBINES),
    default="mean",
    show_default=True,
    help="Average the members' probabilities, or their log-odds (better for members calibrated differently).",
)
@click.option(
    "--forms",
    type=click.Choice(["compile", "skip"]),
    default="compile",
    show_default=True,
    help="compile: also write the serving forms (int8, bfloat16), gated on the --validation clips, so scoring loads "
    "without TensorFlow; skip: quicker, served by Keras until `audioset compile`.",
)
@click.pass_obj
def ensemble(
    settings: Settings,
    members: tuple[Path, ...],
    output: Path,
    name: str,
    version: str,
    validation_data: tuple[str, ...],
    method: Combine,
    forms: str,
) -> None:
    """Combine trained artifacts into one that serves the mean of their predictions.

    One ensemble artifact given alone is rebuilt from its own members, e.g. to change --combine.
    Given beside other members, an ensemble keeps one vote for all its members (a warning says so).

    The result is an ordinary artifact: point AUDIOSET_MODEL_PATH at it, or evaluate it with
    `audioset evaluate OUTPUT DATA`.
    """
    from model.ensemble import combine_artifacts

    held_out = None
    if validation_data:
        from audioset_batch.training.datasets import load_dataset
        from model.artifact import read_manifest

        first = read_manifest(members[0])  # members share frames and classes, or combining refuses them
        held_out = load_dataset(list(validation_data), settings, frames=first.frames, classes=len(first.classes))
    manifest = combine_artifacts(
        list(members),
        output,
        name=name,
        version=version,
        validation=(held_out.x, held_out.y) if held_out else None,
        validation_description=", ".join(held_out.sources) if held_out else "",
        method=method,
        compile_forms=forms == "compile",
    )
    summary = {
        "artifact": str(output),
        "model": manifest.tag,
        "members": [str(m) for m in members],
        "combine": method,
    }
    if "validation" in manifest.metrics:
        summary["validation_map"] = manifest.metrics["validation"]["mAP"]
    click.echo(json.dumps(summary))
