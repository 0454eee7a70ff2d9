"""Shared fixtures: one trained digits CNN per session, saved as .h5, and its data splits."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def digits():
    from examples.digits_cnn import load_digits_splits

    return load_digits_splits()


@pytest.fixture(scope="session")
def digits_model_path(digits, tmp_path_factory):
    from examples.digits_cnn import train_digits_cnn

    path = tmp_path_factory.mktemp("digits") / "digits_cnn.h5"
    train_digits_cnn(digits).save(path)
    return path


@pytest.fixture(scope="session")
def digits_model(digits_model_path):
    from converters.sources.keras import load_keras_model

    return load_keras_model(digits_model_path)


@pytest.fixture(scope="session")
def digits_npz(digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits_data")
    np.savez(folder / "train.npz", x=digits.x_train, y=digits.y_train)
    np.savez(folder / "test.npz", x=digits.x_test, y=digits.y_test)
    return folder / "train.npz", folder / "test.npz"
