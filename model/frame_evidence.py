"""Per-frame evidence: the served model with a second output, each frame's probabilities ``(clips, frames, classes)``.

A decision-level network scores every frame before it pools them into the clip's score, so it can say *where* in
a window a sound is: the event tracker moves an event's edges from the middle of its first and last windows to the
frames (:func:`audioset_batch.scoring.windows.frame_edges`), which measurably places events better in time
(``python -m benchmarks.event_edges``: time F1 0.401 to 0.432 on real recordings).

Found from the graph's structure, not from layer names:

- max or average pooling: the pooled per-frame probabilities themselves;
- single attention: the attention head's per-frame probabilities;
- multi-level attention: the fusion layer applied to each frame's head probabilities (its clip output is the same
  layer applied to their attention-weighted means; one head alone places edges no better than windows);
- feature-level attention pools hidden features, not probabilities: no evidence;
- branches and ensemble members with evidence are averaged; a model with none gets ``None``.

The clip output is unchanged (the same layers, the same weights); only the evidence is new.
"""

from __future__ import annotations

from typing import Any

from model.native_logs import import_tensorflow

import_tensorflow()  # quietly, before Keras below loads it

import keras  # noqa: E402

from model.architectures import branch_outputs  # noqa: E402
from model.attention_pooling import AttentionPooling, AveragePooling, MaxPooling  # noqa: E402
from model.serving_graph import FrameDense  # noqa: E402


def with_frame_evidence(net: keras.Model) -> keras.Model | None:
    """``net`` with outputs ``[clip probabilities, per-frame probabilities]``, or None when it has no evidence."""
    members = [layer for layer in net.layers if isinstance(layer, keras.Model)]
    if members:
        return _ensemble_evidence(net, members)
    found = [frames for out in branch_outputs(net) if (frames := _branch_frames(out)) is not None]
    if not found:
        return None
    evidence = found[0] if len(found) == 1 else keras.layers.Average(name="frame_evidence_mean")(found)
    return keras.Model(net.input, [net.output, evidence], name=f"{net.name}_with_frames")


def _ensemble_evidence(net: keras.Model, members: list[keras.Model]) -> keras.Model | None:
    """An ensemble (input, members, one layer combining them, as :func:`model.ensemble.combine` builds it) rebuilt
    with each member's evidence beside its output."""
    if len(net.layers) != len(members) + 2 or not isinstance(net.layers[0], keras.layers.InputLayer):
        return None
    combining = net.layers[-1]
    inputs = keras.Input(shape=net.input_shape[1:], name="embeddings")
    outputs, evidence = [], []
    for member in members:
        with_frames = with_frame_evidence(member)
        if with_frames is None:
            outputs.append(member(inputs))
            continue
        clip, frames = with_frames(inputs)
        outputs.append(clip)
        evidence.append(frames)
    if not evidence:
        return None
    merged = evidence[0] if len(evidence) == 1 else keras.layers.Average(name="frame_evidence_mean")(evidence)
    return keras.Model(inputs, [combining(outputs), merged], name=f"{net.name}_with_frames")


def _producer(tensor: Any) -> Any:
    return tensor._keras_history.operation


def _probabilities(tensor: Any) -> bool:
    """A sigmoid Dense's output: per-class probabilities, comparable with the clip's."""
    layer = _producer(tensor)
    return isinstance(layer, keras.layers.Dense) and keras.activations.serialize(layer.activation) == "sigmoid"


def _pooled_values(tensor: Any) -> Any | None:
    """The per-frame probabilities a pooling layer turned into ``tensor``, if it pooled probabilities."""
    layer = _producer(tensor)
    if isinstance(layer, (MaxPooling, AveragePooling)):
        values = layer.input
    elif isinstance(layer, AttentionPooling):
        values = layer.input[0]
    else:
        return None
    return values if _probabilities(values) else None


def _branch_frames(clip: Any) -> Any | None:
    if (values := _pooled_values(clip)) is not None:
        return values
    fusion = _producer(clip)
    if not _probabilities(clip) or not isinstance(_producer(fusion.input), keras.layers.Concatenate):
        return None
    heads = [_pooled_values(pooled) for pooled in _producer(fusion.input).input]
    if any(head is None for head in heads):
        return None
    per_frame = keras.layers.Concatenate(axis=-1, name=f"{fusion.name}_frame_heads")(heads)
    frame_fusion = FrameDense(fusion.units, activation="sigmoid", name=f"{fusion.name}_frames")
    evidence = frame_fusion(per_frame)
    frame_fusion.set_weights(fusion.get_weights())
    return evidence
