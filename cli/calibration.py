"""``audioset thresholds``: per-class decision thresholds for a model, chosen on labelled held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import click

from audioset_batch.settings import Settings
from cli.common import ModelPath, json_option, main, note, precision_option, progress_bar, quiet_option


@main.command()
@click.argument("model_path", type=ModelPath())
@click.argument("data", nargs=-1, required=True)
@json_option
@precision_option
@quiet_option
@click.pass_obj
def thresholds(
    settings: Settings, model_path: Path, data: tuple[str, ...], as_json: bool, precision: str | None, quiet: bool
) -> None:
    """Choose MODEL's per-class thresholds on labelled DATA (held out: never its training data) and keep them in
    its manifest; `--labels threshold` and events then use them.

    Per class, the threshold with the best F1 (classes with under 5 positive clips share the one with the best
    micro F1). The figures printed are cross-fitted: chosen on one half of DATA, measured on the other.
    """
    from audioset_batch.scoring.model_loading import load_predictor
    from audioset_batch.storage.locations import parse
    from audioset_batch.training.datasets import load_dataset, provenance
    from model.artifact import write_thresholds
    from model.thresholds import calibration

    predictor = load_predictor(settings, model_path, precision)
    dataset = load_dataset(list(data), settings, frames=predictor.frames, classes=predictor.classes)
    bar = progress_bar(len(dataset.x), "thresholds", "clip", quiet)
    scores = predictor.predict(dataset.x, progress=bar.update)
    bar.close()
    named = ", ".join(provenance(parse(item, settings)) for item in data)
    chosen = calibration(scores, dataset.y, f"{named} ({len(dataset.x)} clips, {predictor.tag})")
    write_thresholds(model_path, chosen)
    figures = chosen["cross_fitted"]
    if as_json:
        keep = ("clips", "cross_fitted", "shared", "shared_cross_fitted")
        click.echo(json.dumps({"model": predictor.tag, **{k: chosen[k] for k in keep}}))
        return
    shared = chosen["shared_cross_fitted"]
    click.echo(
        "cross-fitted    per-class thresholds            one threshold for all ({:.2f})".format(chosen["shared"])
    )
    for average in ("micro", "macro"):
        f, g = figures[average], shared[average]
        click.echo(
            f"{average}:  P {f['precision']:.4f} R {f['recall']:.4f} F1 {f['f1']:.4f}    "
            f"P {g['precision']:.4f} R {g['recall']:.4f} F1 {g['f1']:.4f}"
        )
    note(f"thresholds of {len(chosen['values'])} classes kept in {model_path / 'manifest.json'}")
