"""``audioset compile``: add the compiled serving forms to an artifact written before they existed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from audioset_batch.settings import Settings
from cli.common import ModelPath, json_option, main, note, warn


@main.command("compile")
@click.argument("model_path", type=ModelPath())
@click.argument("data", nargs=-1)
@json_option
@click.pass_obj
def compile_model(settings: Settings, model_path: Path, data: tuple[str, ...], as_json: bool) -> None:
    """Compile MODEL's serving graph once (int8 for LiteRT; float16 weights that OpenVINO computes in bfloat16)
    and list the forms in its manifest, so scoring loads them without TensorFlow. `train` and `ensemble` do this
    themselves. A model that scores each frame also gets a twin with that per-frame evidence, which recordings use
    to place event edges to the frame.

    Given labelled held-out DATA (never the model's training data), measure the form's accuracy gate: its mAP
    beside float32's on DATA. A form that loses more than 0.001 is kept but never picked by `--precision auto`.
    OpenVINO measures the bfloat16 form's gate in bfloat16 on a CPU with AMX or AVX-512 BF16, elsewhere in float32
    (the gate says so).
    """
    from audioset_batch.storage.locations import parse
    from audioset_batch.training.datasets import load_dataset, provenance
    from model.artifact import read_manifest
    from model.form_builder import Validation, add_forms

    validation = None
    if data:
        manifest = read_manifest(model_path)
        dataset = load_dataset(list(data), settings, frames=manifest.frames, classes=len(manifest.classes))
        named = ", ".join(provenance(parse(item, settings)) for item in data)
        validation = Validation(dataset.x, dataset.y, f"{named} ({len(dataset.x)} clips)")
    compiled = add_forms(model_path, validation).compiled
    if as_json:
        click.echo(json.dumps({"model": str(model_path), "compiled": compiled}))
        return
    for precision, form in compiled.items():
        gate = form.get("gate")
        measured = (
            f"; mAP {gate['map']:.4f} against float32's {gate['float32_map']:.4f} on {gate['data']}" if gate else ""
        )
        if gate and "computed_in" in gate:
            measured += f" (computed in {gate['computed_in']}: this CPU has no {precision} arithmetic)"
        note(f"{precision}: {form['file']} ({form['bytes'] / 1e6:.1f} MB, run by {form['runtime']}){measured}")
        if "frames" in form:
            twin = form["frames"]
            note(f"{precision} with per-frame evidence: {twin['file']} ({twin['bytes'] / 1e6:.1f} MB), for event edges")
        if gate and not gate["passed"]:
            warn(f"the {precision} form fails its accuracy gate: `--precision auto` will not serve it")
    if not data:
        note("no DATA given: the forms' accuracy is not measured (give labelled held-out files to record it)")
