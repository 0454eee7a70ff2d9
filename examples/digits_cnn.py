"""The bundled example: a small CNN trained on scikit-learn's digits (shipped data, no download).

Used by the README's first command, the tests and the benchmarks, so all three
measure the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEED = 0


@dataclass(frozen=True)
class DigitsSplits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_splits(test_fraction: float = 0.2) -> DigitsSplits:
    """8x8 grey digits scaled to [0, 1], NHWC, with a stratified held-out test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype(np.int64), test_size=test_fraction, random_state=SEED,
        stratify=digits.target)
    return DigitsSplits(x_train, y_train, x_test, y_test)


def build_digits_cnn(keras=None):
    """3 conv + 2 dense layers, 188,234 parameters, softmax over 10 classes (tf_keras unless ``keras`` is given)."""
    from converters import _tf

    keras = keras or _tf.keras()
    layers = keras.layers
    return keras.Sequential([
        layers.Input((8, 8, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="fc1"),
        layers.Dense(10, activation="softmax", name="classifier"),
    ], name="digits_cnn")


def train_digits_cnn(splits: DigitsSplits, epochs: int = 40, verbose: int = 0, keras=None):
    """A trained digits CNN (about 99% test accuracy), deterministic for a given seed (tf_keras unless
    ``keras`` is given, e.g. Keras 3)."""
    from converters import _tf

    keras = keras or _tf.keras()
    keras.utils.set_random_seed(SEED)
    model = build_digits_cnn(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(splits.x_train, splits.y_train, batch_size=32, epochs=epochs, verbose=verbose)
    return model


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean() * 100.0)
