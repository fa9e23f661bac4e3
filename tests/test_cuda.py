"""The library on a CUDA device (`gpu` marker: skipped where torch sees no CUDA device).

Same tiny random-weight encoders on the CPU and on CUDA: encodings agree to float tolerance and
the predicted masks agree almost everywhere (kernels differ, so bit equality is not expected).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfsam import GFSAM, build_pipeline
from gfsam.shots import mask_iou

pytestmark = pytest.mark.gpu


def _pipeline(device: str) -> GFSAM:
    torch.manual_seed(0)
    return build_pipeline(preset="tiny", random_weights=True, device=device)


def test_cuda_matches_cpu_on_the_tiny_pipeline() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), dtype=bool)
    mask[20:70, 30:90] = True
    cpu, cuda = _pipeline("cpu"), _pipeline("cuda")
    ref_cpu, ref_cuda = cpu.encode_reference(image, mask), cuda.encode_reference(image, mask)
    np.testing.assert_allclose(ref_cuda.tokens, ref_cpu.tokens, rtol=1e-3, atol=1e-3)
    tgt_cpu, tgt_cuda = cpu.encode_target(image), cuda.encode_target(image)
    np.testing.assert_allclose(tgt_cuda.embedding, tgt_cpu.embedding, rtol=1e-3, atol=1e-3)
    pred_cpu, pred_cuda = cpu.predict(tgt_cpu, [ref_cpu]), cuda.predict(tgt_cuda, [ref_cuda])
    assert pred_cuda.mask.shape == (96, 128)
    assert mask_iou(pred_cuda.mask, pred_cpu.mask) > 0.95
