"""Inference precision (``dynfield.models.precision``): bfloat16 on a CPU that has it, float32 on request."""

import copy
import math

import numpy as np
import pytest
import torch

from dynfield.checkpoint import load_model
from dynfield.codec import default_checkpoint
from dynfield.codec.field import reconstruct, tokenize, tokens_to_numpy
from dynfield.models import precision


def multiscale_fields(n=8, size=64, seed=0):
    """(n, 1, size, size) random fields with a k^-3 energy spectrum, unit variance: turbulence-like detail."""
    rng = np.random.default_rng(seed)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(size) * size, np.fft.fftfreq(size) * size))
    amplitude = np.where(k > 0, np.maximum(k, 1.0) ** -2.0, 0.0)
    spectrum = amplitude * np.exp(2j * math.pi * rng.random((n, size, size)))
    x = np.fft.ifft2(spectrum).real
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)
    return torch.from_numpy(x[:, None].astype(np.float32))


def psnr(a, b):
    return 10 * math.log10(float((b.amax() - b.amin()) ** 2 / (a - b).square().mean()))


@pytest.fixture(scope="module")
def model():
    return load_model(default_checkpoint())[0]


def tokens_and_reconstruction(model, x, bfloat16, monkeypatch):
    monkeypatch.setenv(precision.ENV, bfloat16)
    fields = tokens_to_numpy(tokenize(model, x, fine_ratio=0.5))
    return fields, reconstruct(model, fields, x.shape[-2:])


def test_a_loaded_model_is_ready_for_cpu_inference(model):
    assert not model.training
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_float32_on_request_decodes_as_the_model_does(model, monkeypatch):
    x = multiscale_fields(n=2)
    fields, recon = tokens_and_reconstruction(model, x, "0", monkeypatch)
    with torch.no_grad():
        plain = model.decode(model.encode(x, fine_ratio=0.5))
    assert recon.dtype == torch.float32
    assert torch.equal(recon, plain)


def test_a_float64_model_is_never_autocast(model, monkeypatch):
    monkeypatch.setenv(precision.ENV, "1")
    with precision.autocast(copy.deepcopy(model).double()):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(not precision.bfloat16_on_cpu(), reason="this CPU has no native bfloat16")
def test_bfloat16_keeps_the_tokens_and_the_quality_of_float32(model, monkeypatch):
    x = multiscale_fields()
    exact, exact_recon = tokens_and_reconstruction(model, x, "0", monkeypatch)
    fast, fast_recon = tokens_and_reconstruction(model, x, "1", monkeypatch)
    assert fast_recon.dtype == torch.float32
    grain_agreement = np.mean([np.mean(a.grain == b.grain) for a, b in zip(exact, fast)])
    code_agreement = np.mean([np.mean(a.codes[k] == b.codes[k]) for a, b in zip(exact, fast) for k in range(2)])
    assert grain_agreement > 0.97 and code_agreement > 0.9
    assert abs(psnr(fast_recon, x) - psnr(exact_recon, x)) < 0.2
    # the same tokens decode within bfloat16's rounding of the float32 decoder
    same_tokens = reconstruct(model, exact, x.shape[-2:])
    assert psnr(same_tokens, exact_recon) > 40
