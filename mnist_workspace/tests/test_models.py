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
    plain = models.build("lenet")
    augmented = models.build("lenet", augment=True, elastic=True)
    assert augmented.count_params() == plain.count_params()
    augmented.set_weights(plain.get_weights())
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(augmented.predict(x, verbose=0), plain.predict(x, verbose=0))


def test_for_inference_drops_the_augmentation_and_keeps_the_weights() -> None:
    augmented = models.build("fast", augment=True, elastic=True)
    network = models.for_inference(augmented)
    assert models.AUGMENTATION in [layer.name for layer in augmented.layers]
    assert models.AUGMENTATION not in [layer.name for layer in network.layers]
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(network.predict(x, verbose=0), augmented.predict(x, verbose=0))
    assert network.layers[0].kernel is augmented.layers[1].kernel


def test_elastic_distortion_with_no_strength_resamples_the_image_exactly() -> None:
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    same = models.ElasticDistortion(alpha=0.0)(x, training=True)
    np.testing.assert_allclose(np.asarray(same), x, atol=1e-6)


def test_elastic_distortion_moves_each_image_its_own_way_in_both_directions() -> None:
    """A one-pixel dot in every image: where its brightness ends up is the displacement.
    Rows and columns must move independently (Keras's built-in layer moves them together)
    and by about the designed pixel or so, a different way in each image."""
    dots = np.zeros((256, 28, 28, 1), "float32")
    dots[:, 14, 14, 0] = 1.0
    moved = np.asarray(models.ElasticDistortion(seed=0)(dots, training=True))[..., 0]
    rows, cols = np.indices((28, 28))
    mass = moved.sum(axis=(1, 2))
    shift_rows = (moved * rows).sum(axis=(1, 2)) / mass - 14
    shift_cols = (moved * cols).sum(axis=(1, 2)) / mass - 14
    assert abs(np.corrcoef(shift_rows, shift_cols)[0, 1]) < 0.2
    assert 0.5 < np.mean(np.hypot(shift_rows, shift_cols)) < 3.0
    assert len(np.unique(np.round(shift_rows, 3))) > 128
    np.testing.assert_allclose(models.ElasticDistortion(seed=0)(dots, training=False), dots)


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.build("resnet")
