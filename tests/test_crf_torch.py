"""The PyTorch refiner: its lattice, and agreement with pydensecrf."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from deeplab_geo.crf import CRFParams, kernel_features, position_features, refine
from deeplab_geo.crf import lattice as crf_torch
from deeplab_geo.devices import torch_device
from deeplab_geo.errors import ConfigError

TORCH = CRFParams(refiner="torch", device="cpu")


def noisy_scene(height=40, width=56, seed=0):
    """Three colour regions with sensor noise; network probabilities blurred across edges."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((height, width), np.int64)
    truth[:, width // 3:] = 1
    truth[height // 2:, 2 * width // 3:] = 2
    palette = np.array([[40, 70, 150], [60, 150, 50], [200, 190, 60]], np.float32)
    image = np.clip(palette[truth] + rng.normal(0, 6, (height, width, 3)), 0, 255)
    logits = np.stack([(truth == c).astype(np.float32) for c in range(3)]) * 2.0
    logits += rng.normal(0, 1.2, logits.shape).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return np.ascontiguousarray(image.astype(np.uint8)), probs.astype(np.float32), truth


def test_lattice_filter_approximates_a_gaussian():
    theta = 3.0
    lattice = crf_torch.PermutohedralLattice(torch.from_numpy(position_features(31, 31,
                                                                                theta)))
    delta = torch.zeros(31 * 31, 1)
    delta[15 * 31 + 15] = 1
    response = lattice.filter(delta)[:, 0].reshape(31, 31).numpy()
    yy, xx = np.mgrid[:31, :31]
    exact = np.exp(-((yy - 15) ** 2 + (xx - 15) ** 2) / (2 * theta**2))
    assert np.corrcoef(response.ravel(), exact.ravel())[0, 1] > 0.99
    assert response[15, 15] == response.max()
    assert response[0, 0] < 1e-3 * response[15, 15]


def test_torch_refiner_agrees_with_pydensecrf():
    image, probs, _ = noisy_scene()
    reference = refine(probs, image, CRFParams())
    refined = refine(probs, image, TORCH)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    assert (refined.argmax(0) == reference.argmax(0)).all()
    assert np.abs(refined - reference).max() < 1e-4
    assert (refined.argmax(0) != probs.argmax(0)).any()  # the CRF did change labels


@pytest.mark.parametrize("settings", [
    CRFParams(iterations=3, w1=0),
    CRFParams(iterations=3, w2=0, theta_alpha=5, theta_beta=10),
])
def test_torch_refiner_agrees_with_pydensecrf_for_each_kernel(settings):
    image, probs, _ = noisy_scene(seed=1)
    reference = refine(probs, image, settings)
    refined = refine(probs, image, replace(settings, refiner="torch"))
    assert np.abs(refined - reference).max() < 1e-4


def test_wide_keys_take_the_unpacked_path_with_the_same_result(monkeypatch):
    features = torch.from_numpy(kernel_features(*noisy_scene()[:1], CRFParams())[1])
    values = torch.rand(features.shape[1], 3, generator=torch.Generator().manual_seed(0))
    packed = crf_torch.PermutohedralLattice(features)
    monkeypatch.setattr(crf_torch, "_PACK_LIMIT", 2)
    unpacked = crf_torch.PermutohedralLattice(features)
    assert unpacked.size == packed.size
    assert torch.allclose(unpacked.filter(values), packed.filter(values), atol=1e-5)


def test_keys_wider_than_one_sort_word_group_the_same():
    keys = torch.tensor([7, 3, 7, 2**50, 3, 0])
    for limit in (2**51, 2**62):  # one sort of key << 3 | entry; an argsort, then a sort
        ranks, order, distinct = crf_torch._group(keys, limit)
        assert ranks.tolist() == [2, 1, 2, 3, 1, 0]
        assert order.tolist() == [5, 1, 4, 0, 2, 3]
        assert distinct.tolist() == [0, 3, 7, 2**50]


def test_grid_lattice_is_cached_per_shape():
    image, probs, _ = noisy_scene()
    crf_torch.forget_lattices()
    refine(probs, image, TORCH)
    refine(probs[:, :20], np.ascontiguousarray(image[:20]), TORCH)
    refine(probs, image, TORCH)
    info = crf_torch._grid_lattice.cache_info()
    assert (info.hits, info.misses) == (1, 2)


def test_missing_cuda_device_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="crf.device cuda:0: no such CUDA device"):
        image, probs, _ = noisy_scene()
        refine(probs, image, replace(TORCH, device="cuda:0"))
    assert torch_device("auto") == torch.device("cpu")


@pytest.mark.gpu
def test_cuda_refiner_equals_cpu_refiner():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    image, probs, _ = noisy_scene()
    valid = np.ones(probs.shape[1:], bool)
    valid[:5] = False
    for mask in (None, valid):
        on_cpu = refine(probs, image, TORCH, mask)
        on_gpu = refine(probs, image, replace(TORCH, device="cuda"), mask)
        assert np.abs(on_cpu - on_gpu).max() < 1e-4
