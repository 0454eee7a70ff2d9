"""Keras 3 sources -> an equivalent tf_keras model, because tfmot works on tf_keras models only.

A Keras 3 model (a ``.keras``/``.h5`` file Keras 3 wrote, or a model in memory) is loaded by
Keras 3 itself, rebuilt in tf_keras from its config (architecture, layer by layer) and its
weights (numpy, layer by layer), and the copy is checked against Keras 3's own predictions on a
random batch before any compression.  A layer or option tf_keras cannot express is refused in
one line naming the layer.  Initializers only seed new weights, and every weight is copied, so
an initializer tf_keras lacks falls back to the layer's default.
"""

from __future__ import annotations

import inspect
import json
import os
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import _tf
from ..errors import ConversionError, SourceModelError, first_line

FIDELITY_TOLERANCE = 1e-5  # max abs error, relative to the largest reference output
VERIFY_BATCH = 4
FREE_DIM = 64  # stands in for an unknown spatial size in the verification batch
BASE_LAYER_KWARGS = {"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape",
                     "batch_size", "weights", "activity_regularizer", "autocast", "implementation"}
OPS_AS_LAYERS = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply", "Maximum": "Maximum",
                 "Minimum": "Minimum"}  # keras.ops on two tensors in a functional model -> merge layers
FLOAT_POLICIES = ("DTypePolicy", "FloatDTypePolicy", "Policy")
RENAMED = {("InputLayer", "batch_shape"): "batch_input_shape", ("LeakyReLU", "negative_slope"): "alpha"}
ACTIVATIONS = {name: name for name in ("elu", "exponential", "gelu", "linear", "mish", "relu", "selu", "sigmoid",
                                       "softmax", "softplus", "softsign", "swish", "tanh")} | {"silu": "swish"}
# hard_sigmoid is missing on purpose: Keras 3's is relu6(x + 3) / 6, tf_keras's clip(0.2 x + 0.5, 0, 1)
BUILT_LATE = {"MultiHeadAttention": ("query_shape", "key_shape", "value_shape")}  # tf_keras wants the keys


def file_keras_version(path: Path) -> str | None:
    """The Keras version that wrote ``path``, from the file's own metadata (None: not recorded)."""
    if path.is_dir():
        return None  # SavedModel folders keep today's tf_keras route
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "metadata.json" not in archive.namelist():
                    return None
                return str(json.loads(archive.read("metadata.json")).get("keras_version") or "") or None
        import h5py

        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SourceModelError(f"cannot load Keras model {path}: its Keras metadata is unreadable "
                               f"({first_line(exc)}); is the file complete?") from None
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return str(version) if version is not None else None


def written_by_keras3(path: Path) -> bool:
    version = file_keras_version(path)
    return bool(version) and version.split(".")[0] == "3"


def is_keras3_model(obj: Any) -> bool:
    """Keras 3 classes live in ``keras.src...``, tf_keras ones in ``tf_keras...`` (a subclass: its bases do)."""
    return any(c.__module__ == "keras" or c.__module__.startswith("keras.") for c in type(obj).__mro__)


def import_keras3(in_memory: bool = False):
    """Keras 3 on the TensorFlow backend, or one line saying how to get there."""
    try:
        keras = _tf.keras3()
    except ImportError as exc:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        raise SourceModelError(f"Keras 3 could not be imported (backend {backend!r}: {first_line(exc)}); set "
                               "KERAS_BACKEND=tensorflow, the SDK converts through TensorFlow") from None
    backend = keras.backend.backend()
    if backend != "tensorflow" and in_memory:
        raise SourceModelError(
            f"this Keras 3 model runs on the {backend} backend, allowed: tensorflow; save it with "
            "model.save('model.keras') and convert the file with KERAS_BACKEND=tensorflow set")
    if backend != "tensorflow":
        raise SourceModelError(
            f"Keras 3 runs on the {backend} backend here (KERAS_BACKEND or ~/.keras/keras.json), allowed: "
            "tensorflow; set KERAS_BACKEND=tensorflow for the conversion (a .keras file is backend-neutral)")
    return keras


def load_keras3_file(path: Path, custom_objects: dict | None):
    """The Keras 3 model in ``path``, loaded by Keras 3 (which knows its format)."""
    keras = import_keras3()
    custom = unknown_custom_class(_file_config(path), keras, custom_objects or {})
    if custom:
        raise _unknown_class_error(path, custom)
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=False)
    except Exception as exc:  # Keras raises many unrelated types for bad files
        reason = first_line(exc)
        from .keras import unknown_class

        custom = unknown_class(reason)
        if custom:
            raise _unknown_class_error(path, custom) from None
        if "safe_mode" in str(exc) or "arbitrary code execution" in reason:
            raise SourceModelError(
                f"{path} holds a Lambda layer (Python code), which Keras 3 loads only with safe_mode=False; if you "
                "trust the file, load it with keras.saving.load_model(path, safe_mode=False) and pass the model "
                "to sdk.convert") from None
        raise SourceModelError(f"cannot load Keras 3 model {path}: {reason[:200]} (is the file complete?)") from None


def _unknown_class_error(path: Path, name: str) -> SourceModelError:
    return SourceModelError(f"{path} uses a custom class {name!r} that Keras 3 cannot rebuild; pass "
                            f"custom_objects={{{name!r}: TheClass}} in the Python API, or import the module that "
                            "registers it with @keras.saving.register_keras_serializable")


def _file_config(path: Path) -> dict:
    """The model config a Keras 3 file carries (config.json in a .keras zip, model_config in an .h5)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else {}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SourceModelError(f"cannot read the model config in {path}: {first_line(exc)} "
                               "(is the file complete?)") from None


def unknown_custom_class(config, keras, custom_objects: dict) -> str | None:
    """The first class in a saved config that is neither built into Keras nor given nor registered."""
    if isinstance(config, list):
        return next(filter(None, (unknown_custom_class(v, keras, custom_objects) for v in config)), None)
    if not isinstance(config, dict):
        return None
    cls, module, registered = config.get("class_name"), config.get("module"), config.get("registered_name")
    if cls == "Lambda" or cls == "module":
        return None  # Python code: Keras 3's safe mode speaks for it when loading
    if cls == "function" and isinstance(config.get("config"), str):  # a function, e.g. a custom activation
        name = config["config"]
        known = name in custom_objects or hasattr(keras.activations, name) or \
            keras.saving.get_registered_object(registered or name) is not None
        return None if known else name
    if isinstance(cls, str) and "config" in config and not cls.startswith("__"):
        builtin = (module == "keras" or str(module).startswith("keras.")) if module else \
            (hasattr(keras.layers, cls) or cls in ("Functional", "Sequential", "Model"))
        known = builtin or cls in custom_objects or (registered and registered in custom_objects) or \
            keras.saving.get_registered_object(registered or cls) is not None
        if not known:
            return cls
    return next(filter(None, (unknown_custom_class(v, keras, custom_objects) for v in config.values())), None)


def to_tf_keras(model, notes: list[str] | None = None):
    """A tf_keras copy of the Keras 3 ``model`` (architecture and weights), verified against it."""
    keras = import_keras3(in_memory=True)
    entry = keras.saving.serialize_keras_object(model)
    if entry.get("class_name") not in ("Functional", "Sequential") or "layers" not in entry.get("config", {}):
        raise SourceModelError(
            f"Keras 3 model of class {type(model).__name__} is subclassed and has no layer graph to copy; "
            "build it with keras.Model(inputs, outputs) or keras.Sequential, or export it to ONNX")
    translated = _Translator(keras, _tf.keras()).build(entry, "model", model)
    _copy_weights(model, translated)
    error = verify_translation(model, translated)
    if notes is not None:
        notes.append(f"Keras 3 model (read with Keras {keras.__version__}) translated to tf_keras for tfmot, checked "
                     f"against Keras 3 on a random batch of {VERIFY_BATCH}: max abs error {error:.2g} of the output "
                     "scale")
    return translated


class _Translator:
    """Rebuilds a Keras 3 model config in tf_keras, one layer at a time."""

    def __init__(self, keras, tfk):
        self.keras, self.tfk = keras, tfk

    def build(self, entry: dict, where: str, live):
        """``live`` is the Keras 3 layer or model the entry describes (custom layers are copied from it)."""
        name = entry.get("config", {}).get("name") or entry.get("name") or where
        if entry.get("class_name") == "Sequential":
            return self._sequential(entry["config"], name, live)
        if entry.get("class_name") in ("Functional", "Model") and "layers" in entry.get("config", {}):
            return self._functional(entry["config"], name, live)
        return self._layer(entry, live)

    def _sequential(self, config: dict, name: str, live):
        model = self.tfk.Sequential(name=name)
        live_layers = iter(live.layers)
        for entry in config["layers"]:
            if entry.get("class_name") == "InputLayer":
                input_config = entry["config"]
                model.add(self.tfk.layers.InputLayer(batch_input_shape=input_config.get("batch_shape"),
                                                     dtype=input_config.get("dtype"), name=input_config.get("name")))
            else:
                model.add(self.build(entry, name, next(live_layers)))
        if not model.built and config.get("build_input_shape"):
            model.build(config["build_input_shape"])
        model.trainable = config.get("trainable", True)
        return model

    def _functional(self, config: dict, name: str, live):
        outputs: dict[tuple[str, int], Any] = {}
        layers, todo = {}, []
        for entry in config["layers"]:
            layer_name = entry.get("name") or entry["config"]["name"]
            if entry.get("class_name") == "InputLayer":
                input_config = entry["config"]
                tensor = self.tfk.Input(batch_shape=input_config.get("batch_shape"), dtype=input_config.get("dtype"),
                                        name=input_config.get("name", layer_name))
                outputs[(layer_name, 0)] = tensor
                continue
            layers[layer_name] = self.build(entry, name, _live_layer(live, layer_name))
            todo += [(layer_name, node) for node in entry.get("inbound_nodes", [])]
        counts: dict[str, int] = defaultdict(int)
        while todo:
            progressed, waiting = False, set()
            for item in list(todo):
                layer_name, node = item
                if layer_name in waiting:  # keep each layer's nodes in order
                    continue
                try:
                    args = self._resolve(node.get("args", []), outputs)
                    kwargs = {k: v for k, v in self._resolve(node.get("kwargs", {}), outputs).items() if v is not None}
                except KeyError:
                    waiting.add(layer_name)
                    continue
                outputs[(layer_name, counts[layer_name])] = self._call(layers[layer_name], args, kwargs)
                counts[layer_name] += 1
                todo.remove(item)
                progressed = True
            if not progressed:
                raise SourceModelError(f"Keras 3 model {name!r} has layers whose inputs never appear "
                                       f"({', '.join(sorted({n for n, _ in todo}))}); re-save the model")
        inputs = self._resolve(_as_history(config["input_layers"]), outputs)
        result = self._resolve(_as_history(config["output_layers"]), outputs)
        model = self.tfk.Model(inputs, result, name=name)
        model.trainable = config.get("trainable", True)
        return model

    def _call(self, layer, args: list, kwargs: dict):
        if getattr(layer, "_sdk_from_op", False):  # keras.ops.add(x, y) -> tf_keras Add()([x, y])
            if len(args) != 2 or kwargs or not all(_symbolic(self.tfk, a) for a in args):
                raise SourceModelError(
                    f"Keras 3 model applies keras.ops {type(layer).__name__.lower()} ({layer.name!r}) to a "
                    "constant, which tf_keras cannot rebuild; use a layer instead (e.g. keras.layers.Rescaling "
                    "for x * a + b)")
            return layer(list(args))
        try:
            return layer(*args, **kwargs)
        except Exception as exc:  # tf_keras raises many types for calls it cannot make
            raise SourceModelError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be called in tf_keras "
                                   f"as in Keras 3: {first_line(exc, 200)}; replace it with layers tf_keras "
                                   "has") from None

    def _resolve(self, value, outputs: dict):
        """Replace serialized Keras tensors with the tf_keras tensors already built (KeyError: not yet)."""
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            value = _History(*value["config"]["keras_history"])
        if isinstance(value, _History):
            return _tf.tensorflow().nest.flatten(outputs[(value.layer, value.node)])[value.tensor]
        if isinstance(value, dict) and value.get("class_name") == "__tuple__":
            return tuple(self._resolve(v, outputs) for v in value["config"]["value"])
        if isinstance(value, dict):
            return {k: self._resolve(v, outputs) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._resolve(v, outputs) for v in value]
        return value

    def _layer(self, entry: dict, live):
        cls, module = entry.get("class_name", "?"), entry.get("module") or ""
        config = entry.get("config", {})
        name = config.get("name", entry.get("name", "?"))
        builtin = module == "keras.layers" or module.startswith(("keras.layers", "keras.src.layers"))
        if live is not None and (cls == "Lambda" or not (builtin or module.startswith("keras.src.ops"))):
            from .keras3_custom import host_custom_layer

            return host_custom_layer(live)
        if module.startswith("keras.src.ops") and cls in OPS_AS_LAYERS:
            layer = getattr(self.tfk.layers, OPS_AS_LAYERS[cls])(name=name)
            layer._sdk_from_op = True
            return layer
        if module.startswith("keras.src.ops"):
            raise SourceModelError(f"Keras 3 model applies keras.ops {cls} ({name!r}) outside a layer, which tf_keras "
                                   "cannot rebuild; use the matching keras.layers layer instead")
        if not builtin:
            raise SourceModelError(
                f"layer {name!r} is a custom Keras 3 class {cls!r} (module {module or '?'}) with no tf_keras "
                "equivalent; replace it with built-in keras.layers, or export the model to ONNX and convert that")
        tfk_cls = getattr(self.tfk.layers, cls, None)
        if tfk_cls is None:
            raise SourceModelError(f"layer {name!r} is a Keras 3 {cls}, which tf_keras does not have; replace it "
                                   "with layers tf_keras has, or export the model to ONNX and convert that")
        translated = self._config(config, cls, tfk_cls, name)
        try:
            return tfk_cls.from_config(translated)
        except Exception as exc:  # tf_keras raises TypeError/ValueError for options it cannot take
            raise SourceModelError(f"layer {name!r} ({cls}) cannot be rebuilt in tf_keras: {type(exc).__name__} "
                                   f"{first_line(exc, 200)}; "
                                   "replace it with layers tf_keras has") from None

    def _config(self, config: dict, cls: str, tfk_cls, name: str) -> dict:
        out = {key: None for key in BUILT_LATE.get(cls, ())}
        for key, value in config.items():
            key = RENAMED.get((cls, key), key)
            if key == "dtype":
                value = self._dtype(value, name)
            elif key.endswith("activation") and isinstance(value, str):
                if value not in ACTIVATIONS:
                    raise SourceModelError(
                        f"layer {name!r} ({cls}) uses activation {value!r}, which tf_keras computes differently "
                        f"or lacks; allowed: {', '.join(sorted(ACTIVATIONS))}; use one of them or a layer "
                        "(e.g. keras.layers.ReLU(6.0) for relu6)")
                value = ACTIVATIONS[value]
            elif isinstance(value, dict) and "class_name" in value:
                value = self._object(key, value, name)
                if value is None:
                    continue
            out[key] = value
        accepted, defaults = _accepted(tfk_cls), _defaults(getattr(self.keras.layers, cls, None))
        for key in [k for k in out if k not in accepted and k not in BUILT_LATE.get(cls, ())]:
            value = out.pop(key)
            if value is None or value is False or (key == "data_format" and value == "channels_last") \
                    or (key in defaults and _same(value, defaults[key])):
                continue  # Keras 3's default: tf_keras behaves so without the option
            raise SourceModelError(f"layer {name!r} ({cls}) sets {key}={value!r}, which tf_keras's {cls} has no "
                                   f"option for; rebuild the layer without {key}")
        return out

    def _dtype(self, value, name: str):
        if not isinstance(value, dict):
            return value
        policy = value.get("config", {}).get("name", "?")
        if value.get("class_name") not in FLOAT_POLICIES:
            raise SourceModelError(f"layer {name!r} uses Keras 3's {value.get('class_name')} {policy!r}, which "
                                   "tf_keras has no equivalent of; convert the float model and let the SDK "
                                   "quantize it (--quantize int8)")
        return policy

    def _object(self, key: str, value: dict, name: str):
        """Initializers, regularizers, constraints, activations and wrapped layers, in tf_keras form."""
        cls, config = value["class_name"], value.get("config") or {}
        if cls == "__tuple__":
            return tuple(config["value"])
        if cls == "__numpy__":
            return np.asarray(config["value"], dtype=config.get("dtype"))
        module = value.get("module") or ""
        if module.startswith(("keras.layers", "keras.src.layers")) and hasattr(self.tfk.layers, cls):
            return {"class_name": cls, "config": self._config(config, cls, getattr(self.tfk.layers, cls),
                                                              config.get("name", name))}
        kind = next((k for k in ("initializer", "regularizer", "constraint", "activation") if key.endswith(k)), None)
        registry = {"initializer": self.tfk.initializers, "regularizer": self.tfk.regularizers,
                    "constraint": self.tfk.constraints, "activation": self.tfk.activations}.get(kind)
        target = getattr(registry, cls, None) if registry else None
        if target is not None and inspect.isclass(target):
            accepted = set(inspect.signature(target.__init__).parameters) - {"self"}
            dropped = {k: v for k, v in config.items() if k not in accepted and v is not None}
            if not dropped or kind == "initializer":
                return target(**{k: v for k, v in config.items() if k in accepted})
        if kind == "initializer":
            return None  # weights are copied; only re-initialization would use it
        what = f"the function {config!r}" if cls == "function" and isinstance(config, str) else f"Keras 3's {cls}"
        raise SourceModelError(f"layer {name!r} sets {key} to {what}, which tf_keras cannot express; rebuild the "
                               f"layer with a built-in {kind or 'value'} (or apply it in a custom layer)")


def _live_layer(model, name: str):
    """The Keras 3 layer called ``name`` in ``model`` (None for keras.ops operations, which are not layers)."""
    try:
        return model.get_layer(name)
    except ValueError:
        return None


class _History:
    __slots__ = ("layer", "node", "tensor")

    def __init__(self, layer: str, node: int, tensor: int):
        self.layer, self.node, self.tensor = layer, node, tensor


def _as_history(value):
    """Keras 3 writes one input as ``[name, 0, 0]`` and several as a list (or dict) of those."""
    if isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str) \
            and all(isinstance(v, int) for v in value[1:]):
        return _History(*value)
    if isinstance(value, dict):
        return {k: _as_history(v) for k, v in value.items()}
    return [_as_history(v) for v in value]


def _symbolic(tfk, value) -> bool:
    try:
        return bool(tfk.backend.is_keras_tensor(value))
    except ValueError:  # not a tensor at all
        return False


def _accepted(cls) -> set[str]:
    """Every keyword a tf_keras layer class takes (its own and its bases', plus the base Layer's)."""
    names = set(BASE_LAYER_KWARGS)
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {p.name for p in inspect.signature(init).parameters.values()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names - {"self"}


def _defaults(cls) -> dict:
    if cls is None:
        return {}
    defaults = {}
    for klass in reversed(inspect.getmro(cls)):
        init = klass.__dict__.get("__init__")
        if init is not None:
            defaults.update({p.name: p.default for p in inspect.signature(init).parameters.values()
                             if p.default is not p.empty})
    return defaults


def _same(a, b) -> bool:
    try:
        return bool(np.all(np.asarray(a) == np.asarray(b))) and np.shape(a) == np.shape(b)
    except (TypeError, ValueError):
        return a == b


def _leaves(model) -> dict:
    """Weight-carrying layers by path, through nested models."""
    found = {}
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.__class__.__name__ in ("Functional", "Sequential", "Model"):
            found.update({f"{layer.name}/{k}": v for k, v in _leaves(layer).items()})
        elif layer.weights:
            found[layer.name] = layer
    return found


def _copy_weights(source, target) -> None:
    """Layer by layer, by name, checking every shape."""
    theirs, ours = _leaves(source), _leaves(target)
    missing = sorted(set(theirs) ^ set(ours))
    if missing:
        raise ConversionError(f"the tf_keras copy and the Keras 3 model differ in weighted layers "
                              f"({', '.join(missing[:5])}); please report this model")
    for path, layer in theirs.items():
        weights, slots = layer.get_weights(), ours[path].get_weights()
        shapes = [w.shape for w in weights], [w.shape for w in slots]
        if shapes[0] != shapes[1]:
            raise ConversionError(f"layer {path!r} ({type(layer).__name__}) holds weights of shapes {shapes[0]} in "
                                  f"Keras 3 but {shapes[1]} in tf_keras; it cannot be copied, please report this model")
        ours[path].set_weights(weights)


def verification_batch(model, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = []
    for tensor in model.inputs:
        shape = [VERIFY_BATCH] + [d if d is not None else FREE_DIM for d in tuple(tensor.shape)[1:]]
        dtype = np.dtype(getattr(tensor.dtype, "name", tensor.dtype) if not isinstance(tensor.dtype, str)
                         else tensor.dtype)
        data = rng.integers(0, 2, shape) if np.issubdtype(dtype, np.integer) else rng.random(shape)
        batch.append(data.astype(dtype))
    return batch


def verify_translation(keras3_model, tfk_model) -> float:
    """Max abs error of the tf_keras copy vs Keras 3 on a random batch, relative to the output scale."""
    batch = verification_batch(keras3_model)
    feed = batch[0] if len(batch) == 1 else batch
    keras = import_keras3()
    expected = [np.asarray(keras.ops.convert_to_numpy(o)) for o in
                _tf.tensorflow().nest.flatten(keras3_model(feed, training=False))]
    got = [np.asarray(o) for o in _tf.tensorflow().nest.flatten(tfk_model(feed, training=False))]
    scale = max(float(np.max(np.abs(e))) for e in expected) if expected else 0.0
    error = max(float(np.max(np.abs(e - g))) for e, g in zip(expected, got))
    if not np.isfinite(error) or error > FIDELITY_TOLERANCE * max(scale, 1e-30):
        raise ConversionError(f"the tf_keras copy of this Keras 3 model differs from it by {error:.3g} "
                              f"(output scale {scale:.3g}, allowed {FIDELITY_TOLERANCE:g} of it) on a random "
                              "batch; not converted, please report this model")
    return error / max(scale, 1e-30)
