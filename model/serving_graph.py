"""The graph an artifact is served with: the same predictions, fewer passes over memory.

Two rewrites of the model's config, neither of which TFLite's converter makes by itself for Dense layers applied
per frame (at 1,536 units × 10 frames × 1,024 clips each hidden activation is 63 MB):

- a BatchNormalization after a linear Dense is a fixed affine map per unit at inference, so the Dense's kernel and
  bias absorb it (two elementwise passes fewer per layer);
- a Dense applied per frame becomes :class:`FrameDense`, one 2-D matrix product over clips × frames, so the
  converter fuses its bias and activation into the matrix product (one pass fewer).

Predictions move by float rounding only (about 3e-7); the artifact itself is never changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.native_logs import import_tensorflow

import_tensorflow()  # quietly, before Keras below loads it

import keras  # noqa: E402
from keras import ops  # noqa: E402

History = tuple[str, int, int]


@keras.saving.register_keras_serializable(package="audioset")
class FrameDense(keras.layers.Dense):
    """A Dense layer on ``(clips, frames, features)`` computed as one ``(clips × frames, features)`` product."""

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        shape = ops.shape(inputs)
        out = ops.matmul(ops.reshape(inputs, (-1, shape[-1])), self.kernel)
        if self.use_bias:
            out = ops.add(out, self.bias)
        if self.activation is not None:
            out = self.activation(out)
        return ops.reshape(out, (shape[0], shape[1], self.units))


_FRAME_DENSE = keras.saving.get_registered_name(FrameDense)


def _is_model(layer: dict[str, Any]) -> bool:
    """A nested functional model (an ensemble's member), whose own layers both rewrites visit."""
    return layer["class_name"] in ("Functional", "Model") and "layers" in layer["config"]


def serving_graph(keras_model: keras.Model) -> keras.Model:
    """A copy of the model with batch norms folded and per-frame Dense layers flattened (itself if neither
    applies)."""
    config = keras_model.get_config()
    folds = _fold_config(config)
    flattened = _flatten_config(config)
    if not folds and not flattened:
        return keras_model
    served = keras.Model.from_config(config)
    _copy_weights(keras_model, served, folds)
    return served


def _fold_config(config: dict[str, Any]) -> dict[tuple[str, ...], dict[str, str]]:
    """Rewrite a functional model's config in place; returns, per nested model (by its path of names), the folded
    ``{dense: batch_norm}`` pairs."""
    folds: dict[tuple[str, ...], dict[str, str]] = {}

    def visit(model_config: dict[str, Any], path: tuple[str, ...]) -> None:
        layers: list[dict[str, Any]] = model_config["layers"]
        for layer in layers:
            if _is_model(layer):
                visit(layer["config"], (*path, layer["name"]))
        pairs = _foldable_pairs(layers)
        if not pairs:
            return
        folds[path] = {dense: bn for bn, dense in pairs.items()}
        replacement = {layer["name"]: list(_inputs(layer)[0]) for layer in layers if layer["name"] in pairs}
        model_config["layers"] = [layer for layer in layers if layer["name"] not in pairs]
        for layer in model_config["layers"]:
            if layer["name"] in folds[path]:
                layer["config"]["use_bias"] = True
            layer["inbound_nodes"] = _rewire(layer.get("inbound_nodes", []), replacement)
        model_config["output_layers"] = _rewire(model_config["output_layers"], replacement)

    visit(config, ())
    return folds


def _flatten_config(config: dict[str, Any]) -> int:
    """Make every Dense built on rank-3 input (clips, frames, features) a :class:`FrameDense`; returns how many."""
    count = 0
    for layer in config["layers"]:
        if _is_model(layer):
            count += _flatten_config(layer["config"])
        elif _plain_dense(layer) and len(layer.get("build_config", {}).get("input_shape", ())) == 3:
            layer.update(class_name="FrameDense", module=None, registered_name=_FRAME_DENSE)
            count += 1
    return count


def _plain_dense(layer: dict[str, Any]) -> bool:
    """A Dense whose output is ``activation(x @ kernel + bias)``: with LoRA or quantized weights it is more than
    its ``kernel``, and both rewrites leave it as it is."""
    config = layer["config"]
    dtype = config.get("dtype")
    quantized = isinstance(dtype, dict) and str(dtype.get("class_name", "")).startswith("Quantized")
    return (
        layer["class_name"] == "Dense"
        and not config.get("lora_rank")
        and config.get("quantization_config") is None
        and not quantized
    )


def _foldable_pairs(layers: list[dict[str, Any]]) -> dict[str, str]:
    """``{batch_norm: dense}`` for each BatchNormalization whose only input is a linear Dense used by it alone."""
    by_name = {layer["name"]: layer for layer in layers}
    consumers: dict[str, int] = {}
    for layer in layers:
        for history in _inputs(layer):
            consumers[history[0]] = consumers.get(history[0], 0) + 1
    pairs = {}
    for layer in layers:
        if layer["class_name"] != "BatchNormalization" or len(layer.get("inbound_nodes", [])) != 1:
            continue
        axis = layer["config"].get("axis", -1)
        sources = _inputs(layer)
        if axis not in (-1, [-1]) or len(sources) != 1:
            continue
        dense = by_name.get(sources[0][0])
        if (
            dense is not None
            and _plain_dense(dense)
            and dense["config"].get("activation") == "linear"
            and len(dense.get("inbound_nodes", [])) == 1
            and consumers.get(dense["name"]) == 1
        ):
            pairs[layer["name"]] = dense["name"]
    return pairs


def _inputs(layer: dict[str, Any]) -> list[History]:
    """The ``(layer, node, tensor)`` histories a layer's calls read."""
    found: list[History] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                name, node, tensor = value["config"]["keras_history"]
                found.append((name, node, tensor))
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):  # get_config() keeps some as tuples
            for item in value:
                walk(item)

    walk(layer.get("inbound_nodes", []))
    return found


def _rewire(value: Any, replacement: dict[str, list[Any]]) -> Any:
    """Point every reference to a removed layer's output at that layer's input instead."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = value["config"]["keras_history"]
            if history[0] in replacement:
                value["config"]["keras_history"] = list(replacement[history[0]])
            return value
        for key, item in value.items():
            value[key] = _rewire(item, replacement)
        return value
    if isinstance(value, (list, tuple)):
        if len(value) == 3 and isinstance(value[0], str) and value[0] in replacement:  # an output_layers entry
            return list(replacement[value[0]])
        return [_rewire(item, replacement) for item in value]
    return value


def _copy_weights(
    source: keras.Model, target: keras.Model, folds: dict[tuple[str, ...], dict[str, str]], path: tuple[str, ...] = ()
) -> None:
    pairs = folds.get(path, {})
    for layer in target.layers:
        original = source.get_layer(layer.name)
        if isinstance(layer, keras.Model):
            _copy_weights(original, layer, folds, (*path, layer.name))
        elif layer.name in pairs:
            layer.set_weights(_folded(original, source.get_layer(pairs[layer.name])))
        else:
            layer.set_weights(original.get_weights())


def _folded(dense: keras.layers.Dense, batch_norm: keras.layers.BatchNormalization) -> list[np.ndarray]:
    kernel = np.asarray(dense.kernel, dtype=np.float64)
    bias = np.asarray(dense.bias, dtype=np.float64) if dense.use_bias else np.zeros(kernel.shape[-1])
    mean = np.asarray(batch_norm.moving_mean, dtype=np.float64)
    variance = np.asarray(batch_norm.moving_variance, dtype=np.float64)
    gamma = np.asarray(batch_norm.gamma, dtype=np.float64) if batch_norm.scale else np.ones_like(mean)
    beta = np.asarray(batch_norm.beta, dtype=np.float64) if batch_norm.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + batch_norm.epsilon)
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]
