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
from tests.fakes import FakePipeline, NullSplitPipeline, OraclePipeline, fake_load_image
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
        "null-split": NullSplitPipeline(),
        "tiny": runtime.build_model(_settings(tmp_path)).pipeline,
    }


@pytest.mark.parametrize("kind", ["fake", "oracle", "null-split", "tiny"])
def test_every_model_in_use_does_what_the_contract_states(kind: str, tmp_path: Path) -> None:
    """Each member called as the worker calls it, with the types it states."""
    model = check_model(_models(tmp_path)[kind])
    assert isinstance(model.config, GFSAMConfig)
    labels = np.zeros((48, 64), dtype=np.int32)
    labels[10:30, 20:50] = 1  # the oracle reads classes from the red channel
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[..., 0] = labels
    mask = labels == 1
    if isinstance(model, NullSplitPipeline):
        model.add(image, labels)  # it answers from precomputed ground truth
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

    def encode_mask_engine(self, image: np.ndarray, *, precision: str | None = None) -> Any: ...


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


def test_null_split_model_carries_real_sizes_and_runs_split_and_discovery() -> None:
    """The orchestration benchmark's null-cost model (issue 17): ViT-L-sized tokens, a
    SAM-sized embedding, a prediction the split assignment reads, ground-truth decodes."""
    from gfsam.assign import assign_split, calibrate_label
    from gfsam.discover import discover_candidates, sam_prompt_fn
    from gfsam.image import mask_from_frame, mask_to_frame

    model = NullSplitPipeline()
    labels = np.zeros((120, 160), dtype=np.int32)
    labels[10:70, 20:90] = 1  # the largest class: the "prediction"
    labels[80:115, 100:150] = 2  # an object no label has: discovery's to find
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    image[..., 1] = labels * 40
    model.add(image, labels)
    ref, target = model.encode_reference(image, labels == 1), model.encode_target(image)
    assert target.tokens.shape == (37 * 37, 1024) and target.tokens.dtype == np.float32
    assert target.embedding.shape == (256, 64, 64) and ref.tokens.shape == (37 * 37, 1024)
    preds = model.predict_labels(target, {"A": [ref]})
    squashed = mask_from_frame(mask_to_frame(labels == 1), labels.shape)  # via the 1024 frame
    assert np.array_equal(preds["A"].mask, squashed)
    seg = preds["A"].segmentation
    assert 0 < len(seg.prompt_xy) <= model.prompts and (seg.state == 1).all()
    assert seg.mask[seg.prompt_xy[:, 1], seg.prompt_xy[:, 0]].all()
    cal = calibrate_label([ref], model.config, __import__("gfsam.assign").assign.SplitParams())
    asg = assign_split(target, preds, {"A": [ref]}, cfg=model.config, calibrations={"A": cal})
    assert [i.mask.sum() for i in asg.accepted["A"]] == [squashed.sum()]
    covered = mask_to_frame(labels == 1).numpy()
    found = discover_candidates(target.tokens, covered, sam_prompt_fn(model.sam, target.embedding))
    assert model.sam.calls > 0 and found
    assert any(np.array_equal(c.mask, mask_to_frame(labels == 2).numpy()) for c in found)


def test_install_limits_numpy_blas_threads() -> None:
    """`BLAS_THREADS` (default 1) caps numpy's BLAS pool when a model is installed; 0 leaves it."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from tests.fakes import FakePipeline, fake_model
    from worker import runtime

    def blas() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):  # restored after the test
        settings = Settings(label_studio_api_key="k", _env_file=None)  # type: ignore[call-arg]
        assert settings.blas_threads == 1
        runtime.install(settings, fake_model(FakePipeline()))
        assert blas() and set(blas()) == {1}
        threadpool_limits(limits=2, user_api="blas")
        before = blas()
        off = settings.model_copy(update={"blas_threads": 0})
        runtime.install(off, fake_model(FakePipeline()))
        assert blas() == before  # 0: left as it was
    runtime.reset()
