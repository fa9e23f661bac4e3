"""worker.runtime: the pipeline the settings describe, and the cache key that keeps encodings of
different models or precisions apart."""

from __future__ import annotations

from pathlib import Path

from backend.state.settings import Settings
from worker import runtime


def _settings(tmp_path: Path, **changes: object) -> Settings:
    values: dict[str, object] = {"gfsam_preset": "tiny", "gfsam_max_points": 4} | changes
    return Settings(
        redis_url="redis://unused",
        data_dir=tmp_path,
        _env_file=None,  # type: ignore[call-arg]
        **values,  # type: ignore[arg-type]
    )


def test_precision_reaches_the_pipeline_and_the_cache_key(tmp_path: Path) -> None:
    fp32 = runtime.build_model(_settings(tmp_path))
    bf16 = runtime.build_model(_settings(tmp_path, gfsam_precision="bf16"))
    assert fp32.pipeline.precision == "fp32" and bf16.pipeline.precision == "bf16"  # type: ignore[attr-defined]
    assert fp32.key != bf16.key  # a bf16 worker never reads fp32 encodings, nor the reverse
    assert runtime.build_model(_settings(tmp_path)).key == fp32.key  # same model, same key


def test_cache_key_names_the_engines_and_interactive_sam(tmp_path: Path) -> None:
    """Encodings are keyed by the engines built (after the preset), so switching engines never
    mixes features; INTERACTIVE_SAM gives the click lane its own mask engine (and key)."""
    tiny = runtime.build_model(_settings(tmp_path))
    sam2 = runtime.build_model(_settings(tmp_path, gfsam_preset="tiny_sam2"))
    assert sam2.pipeline.sam.spec.name == "sam2_tiny"  # type: ignore[attr-defined]
    assert sam2.key != tiny.key
    explicit = runtime.build_model(
        _settings(tmp_path, gfsam_sam="sam2_tiny", gfsam_dino="dinov3_tiny")
    )
    assert explicit.key == sam2.key  # the same engines, the same encodings
    settings = _settings(tmp_path, gfsam_preset="tiny_sam2", interactive_sam="sam_tiny")
    batch = runtime.build_model(settings)
    clicks = runtime.build_model(settings, interactive=True)
    assert batch.pipeline.sam.spec.name == "sam2_tiny"  # type: ignore[attr-defined]
    assert clicks.pipeline.sam.spec.name == "sam_tiny"  # type: ignore[attr-defined]
    assert clicks.pipeline.dino.spec.name == "dinov3_tiny"  # type: ignore[attr-defined]
    assert clicks.key != batch.key
