"""The one configuration of the service and the workers (environment variables, `.env`).

Fields are grouped by concern (the `# ---` headers); environment names are the field names.
`get_settings()` is cached; tests build `Settings(...)` directly and pass it to `create_app`.
This module imports nothing of FastAPI, Redis or torch, so the worker can use it too.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Presets whose encoders are built with random weights on purpose (wiring checks, tests).
RANDOM_PRESETS = frozenset({"tiny", "tiny_sam2"})


class Settings(BaseSettings):
    """Environment configuration. Names follow label-studio-ml-backend where one exists."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)
    # --- Label Studio: where it is, the token, and what the backend trusts of it (issue 7).
    label_studio_url: str = "http://localhost:8080"
    label_studio_api_key: SecretStr | None = None  # legacy token or Personal Access Token
    ls_timeout_s: float = 30.0
    # Media hosts fetched besides LABEL_STUDIO_URL's (exact host names or *.suffix); `*` any.
    media_allow_hosts: list[str] = []
    # Private, loopback and link-local media addresses are refused unless this is set.
    media_allow_private: bool = False
    media_deadline_s: float = Field(60.0, gt=0.0)  # total time of one media download
    max_image_pixels: int = Field(64_000_000, ge=1)  # checked from the header, before decoding

    # --- The HTTP service: bind, auth, bounds on what callers may send or hold (issues 7, 22).
    # None: 0.0.0.0 with basic auth configured, else 127.0.0.1 (see `bind_host`).
    host: str | None = None
    port: int = Field(9090, ge=1, le=65535)
    basic_auth_user: str | None = None
    basic_auth_pass: SecretStr | None = None
    # LS sends no auth to /webhook; a shared secret can be added to the LS webhook's headers.
    webhook_secret: SecretStr | None = None
    webhook_secret_header: str = "X-Webhook-Secret"
    public_docs: bool = False  # /docs, /redoc, /openapi.json and /metrics without basic auth
    max_body_bytes: int = Field(8 * 1024**2, ge=1024)  # request bodies (LS's /predict: ~1 KB/task)
    predict_max_waiters: int = Field(32, ge=0)  # /predict calls waiting at once; more answer now
    predict_deadline_s: float = Field(85.0, gt=0.0, lt=100.0)
    predict_poll_s: float = Field(0.05, gt=0.0)
    # An inline /predict reply is checked against LS this long afterwards and posted if LS did
    # not store it (LS timed out, "Send Test Request", a failed batch). 0 disables the check.
    inline_verify_delay_s: int = 150

    # --- Processes, paths and logs.
    model_dir: Path = Path("models")
    data_dir: Path = Path("data")
    # None: `python -m backend.run` starts a private redis-server (appendonly) in DATA_DIR.
    redis_url: str | None = None
    redis_server: str = "redis-server"
    workers: int = Field(1, ge=1, le=16)  # worker processes started by backend.run
    shutdown_grace_s: float = 30.0  # a worker's current job may finish this long on shutdown
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    status_refresh_s: int = Field(5, ge=1)  # the status pages reload themselves this often

    # --- The model (engines, presets, precision, prompt cap).
    # "fast" (SAM 2.1 Hiera-T + DINOv3 ViT-S/16, 32 prompts: CPU projects, the click lane),
    # "default" (SAM ViT-H + DINOv2 ViT-L, the parity mode), "quality" (SAM 2.1 Hiera-L +
    # DINOv3 ViT-L/16); "tiny" and "tiny_sam2" = tiny random models, for wiring checks only.
    # None: the library default (= "default").
    gfsam_preset: str | None = None
    gfsam_random_weights: bool = False
    gfsam_sam: str | None = None  # mask engine name (gfsam registry); None: the preset's
    gfsam_dino: str | None = None  # feature engine name; None: the preset's
    gfsam_device: str = "cpu"
    # Encoder and decoder arithmetic: "bf16" (scoped autocast) on GPUs that support it; "fp32"
    # is the parity mode. Cached encodings of one precision are never reused by the other.
    gfsam_precision: Literal["fp32", "bf16"] = "fp32"
    # Cap on SAM prompts per prediction (GF-SAM's official value is 128); lower it to trade
    # recall for speed on CPU. None keeps the library default.
    gfsam_max_points: int | None = Field(None, ge=1)

    # --- References and the correction loop (issues 5, 12).
    max_shots: int = Field(
        5, ge=1, le=64
    )  # per label; the seed is kept, the oldest correction goes
    # A label whose annotation matches our prediction at least this well is "accepted", not a shot.
    unchanged_iou: float = Field(0.99, ge=0.0, le=1.0)
    # A burst of corrections within this window yields one re-fit and one new version.
    refit_debounce_s: float = Field(2.0, ge=0.0)
    # After a re-fit, the next tasks in Label Studio's order are queued at once (batch queue);
    # the rest are fed `feed_chunk` at a time from the background queue, behind everything
    # else, and a newer version stops the feed. None: queue every task at once (no feed).
    lookahead_tasks: int | None = Field(50, ge=0)
    feed_chunk: int = Field(20, ge=1)

    # --- Labelling: how the labels of one image share its regions, and what is posted (10, 20).
    # split: each instance a label found is kept only when it looks like that label's shots
    # (threshold calibrated from the shots); the rest stay unpainted (candidates for
    # discovery). argmax: every label keeps its whole mask, overlaps to the higher score.
    # label-gate: one similarity gate per label on its whole mask, then argmax (the simple
    # baseline split is measured against; issue 18).
    assign: Literal["split", "label-gate", "argmax"] = "split"
    # /projects/{id} and the status page warn when the reject removed more than this share of
    # the pixels a label's GF-SAM runs found at the current version (issue 18).
    reject_warn_share: float = Field(0.5, gt=0.0, le=1.0)
    # What is posted (predictions and clicks) has no specks, slivers, small holes or nested
    # duplicates (`gfsam.geometry.GeometryParams` says what each means).
    geometry_clean: bool = True
    geometry_min_area_frac: float = Field(0.0002, ge=0.0, le=0.5)  # specks: share of the image
    geometry_min_area_px: int = Field(16, ge=0)
    geometry_fill_holes_frac: float = Field(0.001, ge=0.0, le=0.5)  # holes filled below this
    geometry_fill_holes_px: int = Field(16, ge=0)
    geometry_sliver_px: float = Field(2.0, ge=0.0)  # pieces no thicker than this are dropped
    geometry_nested_share: float = Field(0.9, gt=0.0, le=1.0)  # a region this much inside joins
    geometry_smooth_px: int = Field(0, ge=0, le=16)  # opening + closing radius (0: off)
    # PolygonLabels output: simplification tolerance (px) and vertices per polygon at most.
    polygon_tolerance_px: float = Field(1.0, ge=0.0)
    polygon_max_points: int = Field(256, ge=3, le=10_000)

    # --- Discovery (issue 11).
    # After each prediction, look for recurring unlabelled objects on the target's cached
    # encodings (a few SAM decoder calls) and group them across the project.
    discover: bool = True
    # A BrushLabels label that shows candidates as regions in predictions ("" = off); it never
    # becomes a shot and never takes a real label's pixels.
    candidate_label: str = ""
    # Score of a candidate region (low, so LS sorts it after real labels).
    candidate_score: float = Field(0.05, ge=0.0, le=1.0)
    # Members of a group seeding a promoted label as provisional shots (the most central ones).
    promote_shots: int = Field(3, ge=1, le=10)

    # --- The interactive lane: smart-tool clicks on their own queue and workers (issues 9, 20, 22).
    interactive_workers: int = Field(1, ge=0, le=8)  # `worker.main --interactive` by backend.run
    # The click lane's mask engine (`python -m worker.main --interactive`), e.g.
    # "sam2.1_hiera_tiny", so a CPU deployment answers clicks quickly while pre-annotation uses
    # the preset's. None: the same engine as pre-annotation (clicks then reuse its encodings).
    interactive_sam: str | None = None
    # Precision of a cold click's mask-engine pass (its embedding stays in the lane's memory,
    # never in the shared cache): "auto" = bf16 where the device computes it natively (a CPU
    # with AVX512-BF16 / AMX: SAM 2.1 Hiera-T's encoder 1.8 s instead of 3.1 s on 2 threads
    # here), else fp32. "fp32" keeps clicks bit-equal to pre-annotation's embeddings.
    interactive_precision: Literal["auto", "fp32", "bf16"] = "auto"
    interactive_deadline_s: float = Field(60.0, gt=0.0, lt=100.0)  # /predict waits this long
    interactive_targets_in_memory: int = Field(8, ge=1)  # decoded target encodings kept
    # Clicks waiting at once (issue 22): a cap of their own, beside predict_max_waiters; more
    # answer 503 at once, so waiting clicks never hold the threads /health needs.
    interactive_max_waiters: int = Field(16, ge=1, le=64)
    # Prompts of one click: more points or rectangles are refused (422) before anything is
    # queued (SAM takes one box; a click with thousands of points blocked the lane).
    click_max_points: int = Field(64, ge=1, le=10_000)
    click_max_boxes: int = Field(16, ge=1, le=1_000)
    # Gestures (issue 20): a smart label "<label><suffix>" finds every object like the clicked
    # one in the image; the teach suffix also adds it to the project's references ("" = off).
    find_all_suffix: str = " (all)"
    teach_suffix: str = " (teach)"
    # Masks one "find all" decodes at most (one per region of similar cells, batched): its
    # latency bound, about 125 ms each for SAM's decoder on 2 CPU threads (`gfsam.find_all`).
    find_all_max_decodes: int = Field(10, ge=1, le=128)

    # --- Queues, job timeouts, retries and what Redis keeps.
    queue_high: str = "gfsam-high"
    queue_batch: str = "gfsam-batch"
    queue_background: str = "gfsam-background"
    queue_interactive: str = "gfsam-interactive"
    queue_calibrate: str = "gfsam-calibrate"  # listened to after every other queue (issue 19)
    predict_job_timeout_s: int = 600
    refit_job_timeout_s: int = 1800
    sync_job_timeout_s: int = 3600
    result_ttl_s: int = 3600  # RQ job results (ours live in the store)
    failure_ttl_s: int = 86400  # failed RQ jobs (reasons live in p:{p}:failures, capped)
    prediction_ttl_s: int = 14 * 86400  # stored prediction blobs and delivery claims
    max_failures: int = Field(1000, ge=1)  # failure reasons kept per project; the rest counted
    retry_max: int = 3
    retry_intervals_s: list[int] = [5, 30, 120]
    refit_lock_timeout_s: int = 1800
    refit_lock_wait_s: float = 60.0

    # --- Throughput of a worker: prefetch, batched encoding, background POSTs (issue 12).
    # The next `prefetch_jobs` queued predict jobs' images are downloaded and decoded by
    # `prefetch_threads` threads, holding at most `prefetch_bytes` (0 jobs: off).
    prefetch_jobs: int = Field(4, ge=0, le=64)
    prefetch_threads: int = Field(2, ge=1, le=16)
    prefetch_bytes: int = Field(256 * 1024**2, ge=0)
    # Images per target-encoder call when prefetched images of queued jobs are not cached yet
    # (1: one at a time, as on CPU; 8 on a GPU).
    encode_batch: int = Field(1, ge=1, le=64)
    # LS POSTs of computed predictions on `deliver_threads` background threads, at most
    # `deliver_queue` waiting (0 threads: posted by the job itself, as before).
    deliver_threads: int = Field(0, ge=0, le=16)
    deliver_queue: int = Field(16, ge=1, le=1024)
    # Threads of numpy's BLAS in a worker (0: the library's own default, one per core). Torch
    # runs the models on its own threads; numpy's matmuls (the assignment, discovery's k-means)
    # are small, and two thread pools waiting on the same cores made them ~3x slower on the
    # 2-core machine (issue 17, scripts/bench_orchestration.py --null-split).
    blas_threads: int = Field(1, ge=0, le=256)

    # --- Self-measurement and tuning (issue 19): after each new version, a background job
    # predicts the most recent annotated tasks with references that exclude their own shots,
    # measures each label, tunes its threshold and fits the score map.
    calibrate: bool = True
    calibrate_tasks: int = Field(20, ge=0, le=500)  # annotated tasks scored per version
    # Tasks holding a label before its threshold may move from the default.
    calibrate_min_tasks: int = Field(3, ge=1)
    # Per label, the other assignment modes (at their default threshold) compete with the
    # threshold offsets; one is chosen only when it measures better held out.
    calibrate_modes: bool = True

    # --- Worker caches and liveness.
    target_cache_bytes: int = 4 * 1024**3  # disk, LRU by access time
    reference_cache_items: int = 256  # in-process decoded references
    worker_lease_s: int = Field(15, ge=2)  # a worker without a live lease is dead; its job requeued
    recovery_interval_s: float = 5.0

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()

    @field_validator("label_studio_url")
    @classmethod
    def _strip_url(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _auth_pair(self) -> Settings:
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        return self

    @field_validator("basic_auth_pass")
    @classmethod
    def _utf8_pass(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                value.get_secret_value().encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("BASIC_AUTH_PASS is not valid UTF-8 text") from None
        return value

    @property
    def bind_host(self) -> str:
        """HOST, or loopback when it is unset and no basic auth is configured (secure default)."""
        if self.host:
            return self.host
        return "0.0.0.0" if self.basic_auth_user is not None else "127.0.0.1"

    @property
    def random_weights(self) -> bool:
        """True when the models are random: only wiring can be checked, masks are meaningless."""
        return self.gfsam_random_weights or (self.gfsam_preset or "") in RANDOM_PRESETS

    @property
    def interactive_job_timeout_s(self) -> int:
        """A click job's timeout: the /predict deadline plus room to finish a started decode."""
        return int(self.interactive_deadline_s) + 30

    @property
    def model_class(self) -> str:
        """Human-readable model name for /health (flags random-weights mode loudly)."""
        parts = [x for x in (self.gfsam_preset, self.gfsam_sam, self.gfsam_dino) if x]
        name = f"GFSAM[{'+'.join(parts) or 'default'}]"
        return f"{name} RANDOM-WEIGHTS (wiring check only)" if self.random_weights else name

    @property
    def target_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "targets"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
