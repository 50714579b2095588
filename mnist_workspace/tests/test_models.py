"""The networks: the seed LeNet's exact size, and that every model builds and predicts."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_workspace import models

pytestmark = pytest.mark.unit


def test_lenet_has_the_seed_notebooks_parameter_count() -> None:
    assert models.build("lenet").count_params() == 1_199_882


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_maps_images_to_class_probabilities(name: str) -> None:
    model = models.build(name)
    out = np.asarray(model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0))
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_augmentation_adds_no_parameters_and_is_inactive_at_inference() -> None:
    plain, augmented = models.build("lenet"), models.build("lenet", augment=True)
    assert augmented.count_params() == plain.count_params()
    augmented.set_weights(plain.get_weights())
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(augmented.predict(x, verbose=0), plain.predict(x, verbose=0))


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.build("resnet")
