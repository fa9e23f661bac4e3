"""The per-process holder of everything a job needs: the model, caches, the LS client.

`load(settings)` builds the GF-SAM pipeline once (worker start); `get()` returns the holder and
raises until `load` (or `install`, used by tests with a test double) has run. `install` checks
the model against the worker's contract (`worker.contract`) and refuses one that does not meet
it, so no job ever finds a member missing. One holder per process; the model is not
thread-safe and the worker runs one job at a time (SimpleWorker).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

from backend.state.settings import Settings
from gfsam.geometry import GeometryParams
from worker.cache import ReferenceCache, TargetCache
from worker.contract import SegmentationModel, check_model
from worker.labelstudio.client import LabelStudioClient
from worker.labelstudio.media_policy import MediaPolicy

if TYPE_CHECKING:
    from gfsam.encodings import Reference, TargetEncoding

logger = logging.getLogger(__name__)


@dataclass
class Model:
    """A model that meets the contract, how images are decoded for it, and its cache key."""

    pipeline: SegmentationModel
    load_image: Callable[[bytes], np.ndarray]  # uint8 [H, W, 3] RGB, EXIF orientation applied
    key: str  # identifies the weights: cache entries of another model are never reused

    @staticmethod
    def reference_from_bytes(blob: bytes) -> Reference:
        """A cached reference encoding (`Reference.to_bytes`)."""
        from gfsam.encodings import Reference

        return Reference.from_bytes(blob)

    @staticmethod
    def target_from_bytes(blob: bytes) -> TargetEncoding:
        """A cached target encoding (`TargetEncoding.to_bytes`)."""
        from gfsam.encodings import TargetEncoding

        return TargetEncoding.from_bytes(blob)


@dataclass
class Runtime:
    settings: Settings
    model: Model
    ls: LabelStudioClient
    targets: TargetCache
    references: ReferenceCache


_runtime: Runtime | None = None


def build_model(settings: Settings, *, interactive: bool = False) -> Model:
    """Build the GF-SAM pipeline described by the settings (imports torch and gfsam).

    `interactive`: the click lane's model (`INTERACTIVE_SAM` replaces the mask engine when set).
    The cache key names the engines actually built (after the preset), the weights mode and the
    precision, so encodings of one engine pair are never read by a worker holding another.

    Raises:
        gfsam.encoders.WeightsNotFoundError: a checkpoint is missing (message lists the paths).
    """
    from functools import partial

    import torch

    from gfsam.image import load_image
    from gfsam.pipeline import build_pipeline
    from gfsam.types import GFSAMConfig

    kwargs: dict[str, Any] = {
        "device": settings.gfsam_device,
        "model_dir": settings.model_dir,
        "random_weights": settings.random_weights,
    }
    sam = (settings.interactive_sam if interactive else None) or settings.gfsam_sam
    for name, value in (
        ("preset", settings.gfsam_preset),
        ("sam", sam),
        ("dino", settings.gfsam_dino),
    ):
        if value:
            kwargs[name] = value
    if settings.gfsam_max_points:
        kwargs["config"] = GFSAMConfig(max_points=settings.gfsam_max_points)
    if settings.gfsam_precision != "fp32":  # fp32 stays the parity mode (and the cache key)
        kwargs["precision"] = settings.gfsam_precision
    if settings.random_weights:
        # Same random weights in every worker process, so cached encodings stay interchangeable.
        torch.manual_seed(0)
    pipeline = build_pipeline(**kwargs)
    engines = {"sam": pipeline.sam.spec.name, "dino": pipeline.dino.spec.name}
    key = "|".join(
        f"{k}={(engines | kwargs)[k]}"
        for k in ("sam", "dino", "random_weights", "precision")
        if k in engines | kwargs
    )
    return Model(
        pipeline,
        partial(load_image, max_pixels=settings.max_image_pixels),
        hashlib.sha256(key.encode()).hexdigest()[:12],
    )


def client(settings: Settings) -> LabelStudioClient:
    """The LS client of this process.

    Raises:
        LabelStudioAuthError: LABEL_STUDIO_API_KEY is not set.
    """
    key = settings.label_studio_api_key
    policy = MediaPolicy(
        settings.label_studio_url,
        settings.media_allow_hosts,
        allow_private=settings.media_allow_private,
    )
    return LabelStudioClient(
        settings.label_studio_url,
        key.get_secret_value() if key else "",
        timeout=settings.ls_timeout_s,
        media_policy=policy,
        media_deadline_s=settings.media_deadline_s,
    )


def geometry_params(settings: Settings) -> GeometryParams:
    """What `gfsam.geometry` counts as a defect, and the polygon output rules (GEOMETRY_*,
    POLYGON_*)."""
    return GeometryParams(
        min_area_frac=settings.geometry_min_area_frac,
        min_area_px=settings.geometry_min_area_px,
        fill_holes_frac=settings.geometry_fill_holes_frac,
        fill_holes_px=settings.geometry_fill_holes_px,
        sliver_px=settings.geometry_sliver_px,
        nested_share=settings.geometry_nested_share,
        smooth_px=settings.geometry_smooth_px,
        polygon_tolerance_px=settings.polygon_tolerance_px,
        polygon_max_points=settings.polygon_max_points,
    )


class ThreadClient(threading.local):
    """One LS client per thread (a client is not shared across threads), built on first use in
    each thread: the prefetch and background-POST threads use it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ls: LabelStudioClient | None = None

    def get(self) -> LabelStudioClient:
        if self._ls is None:
            self._ls = client(self._settings)
        return self._ls


def install(settings: Settings, model: Model, ls: LabelStudioClient | None = None) -> Runtime:
    """Make `model` this process's model (tests pass a test double here).

    Raises:
        worker.contract.ContractError: the model lacks a member of the contract (named).
    """
    global _runtime
    check_model(model.pipeline)
    if settings.blas_threads:  # process-wide, as torch's own thread count
        threadpool_limits(settings.blas_threads, user_api="blas")
    _runtime = Runtime(
        settings=settings,
        model=model,
        ls=ls if ls is not None else client(settings),
        targets=TargetCache(settings.target_cache_dir / model.key, settings.target_cache_bytes),
        references=ReferenceCache(settings.reference_cache_items),
    )
    return _runtime


def load(settings: Settings, *, interactive: bool = False) -> Runtime:
    """Check the LS key, build the real pipeline once, and install it (`interactive`: the click
    lane's, see `build_model`)."""
    ls = client(settings)  # RANDOM WEIGHTS is logged once, by gfsam's build_pipeline
    return install(settings, build_model(settings, interactive=interactive), ls)


def get() -> Runtime:
    """The holder installed by `load`/`install`.

    Raises:
        RuntimeError: nothing loaded yet (run `worker.runtime.load(settings)` at worker start).
    """
    if _runtime is None:
        raise RuntimeError("no model loaded in this process: call worker.runtime.load(settings)")
    return _runtime


def reset() -> None:
    """Forget the installed holder (tests)."""
    global _runtime
    _runtime = None
