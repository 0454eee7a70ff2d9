"""The model under a sensitivity search, one class per framework: what budget mode needs from a model.

Budget mode measures how far accuracy drops when one layer alone is compressed. It needs the same few
things of every framework: the weight layers and their kernels, a way to swap a kernel, predictions, and
(for latency) a copy without some of a layer's channels and its multiply-accumulate count.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import RecipeError
from ..recipe import Recipe

KERAS_WEIGHT_LAYERS = ("Conv1D", "Conv2D", "Dense", "DepthwiseConv2D")
KERAS_CHANNEL_LAYERS = ("Conv1D", "Conv2D", "Dense")


def _channels_recipe(name: str, fraction: float) -> Recipe:
    return Recipe.from_dict({"layers": {name: {"channels": {"fraction": fraction}}}})


class KerasSubject:
    """A tf_keras model."""

    channels_first = False

    def __init__(self, model):
        self.model = model
        self.input_shape = tuple(model.inputs[0].shape[1:])

    def weight_layers(self) -> list[tuple[str, str, np.ndarray]]:
        return [(layer.name, type(layer).__name__, layer.get_weights()[0]) for layer in self.model.layers
                if type(layer).__name__ in KERAS_WEIGHT_LAYERS and layer.get_weights()]

    def set_kernel(self, name: str, kernel: np.ndarray) -> None:
        layer = self.model.get_layer(name)
        layer.set_weights([kernel.astype(np.float32), *layer.get_weights()[1:]])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x, verbose=0, batch_size=256)

    def channel_layers(self) -> list[tuple[str, str, int]]:
        return [(layer.name, type(layer).__name__, int(layer.count_params())) for layer in self.model.layers
                if type(layer).__name__ in KERAS_CHANNEL_LAYERS]

    def without_channels(self, name: str, fraction: float) -> "KerasSubject | None":
        """A copy with ``fraction`` of ``name``'s channels removed, or None where they cannot be."""
        from ..techniques.channels.keras import remove_channels_keras

        try:
            thinner, record = remove_channels_keras(self.model, _channels_recipe(name, fraction))
        except RecipeError:  # its channels reach the output, a concatenation, ...
            return None
        return KerasSubject(thinner) if name in record.layers else None

    def macs(self) -> int:
        """Multiply-accumulates of the Conv/Dense/depthwise layers for one sample."""
        total = 0
        for layer in self.model.layers:
            kind = type(layer).__name__
            if kind == "Dense":
                total += int(np.prod(layer.get_weights()[0].shape))
            elif kind in ("Conv1D", "Conv2D", "DepthwiseConv2D"):
                kernel = layer.get_weights()[0]
                total += int(np.prod(layer.output_shape[1:-1])) * int(np.prod(kernel.shape))
        return total


class TorchSubject:
    """A PyTorch module with its example inputs (batch 1), in the source's channels-first layout."""

    def __init__(self, module, example_inputs: Sequence[Any]):
        from ..sources.torch import torch_weights

        self.module, self.example_inputs = module, tuple(example_inputs)
        self.input_shape = tuple(self.example_inputs[0].shape[1:])
        self.channels_first = len(self.input_shape) == 3
        self._weights, self._owners = torch_weights(module)

    def weight_layers(self) -> list[tuple[str, str, np.ndarray]]:
        return [(w.name, w.layer_types[0], self._kernel(w.name)) for w in self._weights]

    def _kernel(self, name: str) -> np.ndarray:
        return self._owners[name].weight.detach().numpy().copy()

    def set_kernel(self, name: str, kernel: np.ndarray) -> None:
        import torch

        with torch.no_grad():
            self._owners[name].weight.copy_(torch.from_numpy(np.asarray(kernel, np.float32)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        from ..training.torch import predict

        return predict(self.module, x)

    def channel_layers(self) -> list[tuple[str, str, int]]:
        return [(w.name, w.layer_types[0], int(sum(p.numel() for p in self._owners[w.name].parameters())))
                for w in self._weights]

    def without_channels(self, name: str, fraction: float) -> "TorchSubject | None":
        from ..techniques.channels.torch import remove_channels

        try:
            thinner, record = remove_channels(self.module, _channels_recipe(name, fraction), self.example_inputs)
        except RecipeError:
            return None
        return TorchSubject(thinner, self.example_inputs) if name in record.layers else None

    def macs(self) -> int:
        from ..techniques.channels.torch import count_macs_and_params

        return count_macs_and_params(self.module, self.example_inputs)[0]
