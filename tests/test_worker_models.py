"""worker.runtime: the pipeline the settings describe, and the cache key that keeps encodings of
different models or precisions apart."""

from __future__ import annotations

from pathlib import Path

from backend.state.settings import Settings
from worker import runtime


def _settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(
        redis_url="redis://unused",
        data_dir=tmp_path,
        gfsam_preset="tiny",
        gfsam_max_points=4,
        _env_file=None,  # type: ignore[call-arg]
        **changes,  # type: ignore[arg-type]
    )


def test_precision_reaches_the_pipeline_and_the_cache_key(tmp_path: Path) -> None:
    fp32 = runtime.build_model(_settings(tmp_path))
    bf16 = runtime.build_model(_settings(tmp_path, gfsam_precision="bf16"))
    assert fp32.pipeline.precision == "fp32" and bf16.pipeline.precision == "bf16"  # type: ignore[attr-defined]
    assert fp32.key != bf16.key  # a bf16 worker never reads fp32 encodings, nor the reverse
    assert runtime.build_model(_settings(tmp_path)).key == fp32.key  # same model, same key
