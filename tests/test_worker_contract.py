"""The worker's model contract (`worker.contract`): what it states is what every model in use
does, fake or real, and a model that lacks a member is refused when the worker starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.state.settings import Settings
from gfsam.decoded import DecodedMasks
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.types import FRAME, GFSAMConfig
from tests.fakes import FakePipeline, OraclePipeline, fake_load_image
from worker import main, runtime
from worker.contract import MODEL_MEMBERS, ContractError, check_model
from worker.runtime import Model


def _settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(
        redis_url="redis://unused",
        label_studio_url="http://127.0.0.1:9",
        label_studio_api_key="k",
        data_dir=tmp_path,
        gfsam_preset="tiny",
        gfsam_max_points=4,
        _env_file=None,  # type: ignore[call-arg]
        **changes,  # type: ignore[arg-type]
    )


def _models(tmp_path: Path) -> dict[str, Any]:
    return {
        "fake": FakePipeline(),
        "oracle": OraclePipeline(),
        "tiny": runtime.build_model(_settings(tmp_path)).pipeline,
    }


@pytest.mark.parametrize("kind", ["fake", "oracle", "tiny"])
def test_every_model_in_use_does_what_the_contract_states(kind: str, tmp_path: Path) -> None:
    """Each member called as the worker calls it, with the types it states."""
    model = check_model(_models(tmp_path)[kind])
    assert isinstance(model.config, GFSAMConfig)
    labels = np.zeros((48, 64), dtype=np.int32)
    labels[10:30, 20:50] = 1  # the oracle reads classes from the red channel
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[..., 0] = labels
    mask = labels == 1
    ref = model.encode_reference(image, mask)
    target = model.encode_target(image)
    batch = model.encode_targets([image, image], batch_size=2)
    assert isinstance(ref, Reference) and isinstance(target, TargetEncoding)
    assert len(batch) == 2 and all(isinstance(t, TargetEncoding) for t in batch)
    assert target.image_size == (48, 64)
    assert np.array_equal(model.encode_mask_engine(image), target.embedding)
    for decoded in (None, DecodedMasks(64)):
        preds = model.predict_labels(target, {"A": [ref], "B": [ref, ref]}, decoded=decoded)
        assert list(preds) == ["A", "B"]
        for pred in preds.values():
            assert isinstance(pred, Prediction) and pred.mask.shape == (48, 64)
            assert pred.mask.dtype == bool and 0.0 <= pred.score <= 1.0
    out, iou, low = model.sam.decode_prompts(
        target.embedding,
        np.array([[512.0, 400.0]]),
        np.array([1]),
        np.array([100.0, 100.0, 900.0, 700.0]),
        np.zeros((256, 256), dtype=np.float32),
        multimask=True,
    )
    assert out.shape == (FRAME, FRAME) and out.dtype == bool
    assert 0.0 <= float(iou) <= 1.0 and low.shape == (256, 256)
    masks, ious = model.sam.decode_boxes(
        target.embedding,
        np.array([[512.0, 400.0], [200.0, 200.0]]),
        np.array([[100.0, 100.0, 900.0, 700.0], [150.0, 150.0, 260.0, 260.0]]),
    )
    assert masks.shape == (2, FRAME, FRAME) and masks.dtype == bool and ious.shape == (2,)


@dataclass
class NoPrediction:
    """A model object that lacks `predict_labels` (and nothing else)."""

    config: GFSAMConfig
    sam: Any

    def encode_reference(self, image: np.ndarray, mask: np.ndarray) -> Any: ...

    def encode_target(self, image: np.ndarray) -> Any: ...

    def encode_targets(self, images: Any, *, batch_size: int = 8) -> Any: ...

    def encode_mask_engine(self, image: np.ndarray) -> Any: ...


def test_a_model_missing_a_member_is_refused_naming_it() -> None:
    broken = NoPrediction(GFSAMConfig(), FakePipeline().sam)
    with pytest.raises(ContractError, match="missing predict_labels"):
        check_model(broken)
    with pytest.raises(ContractError, match="sam .*missing decode_prompts"):
        check_model(FakePipeline(sam=object()))  # type: ignore[arg-type]
    with pytest.raises(ContractError, match="config is a dict"):
        fake = FakePipeline()
        fake.config = {}  # type: ignore[assignment]
        check_model(fake)
    assert set(MODEL_MEMBERS) == {
        "config",
        "sam",
        "encode_reference",
        "encode_target",
        "encode_targets",
        "encode_mask_engine",
        "predict_labels",
    }


def test_the_worker_refuses_such_a_model_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`python -m worker.main`'s start: the model is checked when it is installed, before any
    job; the worker exits with a message naming the missing member."""
    broken = Model(NoPrediction(GFSAMConfig(), FakePipeline().sam), fake_load_image, "broken")  # type: ignore[arg-type]
    monkeypatch.setattr(runtime, "build_model", lambda settings, **_: broken)
    runtime.reset()
    with caplog.at_level(logging.ERROR, logger="worker.main"):
        code = main.load_or_explain(_settings(tmp_path))
    assert code == main.EXIT_MODEL
    assert "missing predict_labels" in caplog.text
    with pytest.raises(RuntimeError):
        runtime.get()  # nothing installed: no job can run with it
