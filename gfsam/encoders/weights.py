"""Checkpoint files: where they live, whether they are intact, and how they load (the only module
of `gfsam` that touches weight files).

Rules: files are looked up under a model directory by their official file name; loading is
``torch.load(map_location="cpu", weights_only=True)`` then ``load_state_dict(strict=True)``;
nothing is ever downloaded implicitly (`download_weights` is an explicit, offline-safe step).

Published sha256 values are third-party records of Meta's files (Meta publishes none):
SAM from ``computational-cell-analytics/micro-sam`` ``micro_sam/util.py`` (``_CHECKSUMS``) and
``finegrain-ai/refiners`` ``src/refiners/conversion/models/sam.py``; DINOv2 from
``finegrain-ai/refiners`` ``src/refiners/conversion/models/dinov2.py``.

Where no sha256 is published (SAM 2.1; DINOv3, whose file names carry only the first 8 hex
digits of it, torch.hub's ``check_hash`` convention, checked here), the sha256 of the file the
user installs is recorded next to it (``<file>.sha256``, written by
``python -m gfsam weights download`` or ``... weights record``) and checked on every later load:
trust on first use, said so in the log and by ``weights verify``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 60.0
# Official DINOv2 keys that timm's ViT has no slot for. mask_token is the learned embedding of
# masked patches in iBOT pre-training; inference never uses it (timm drops it too).
DINOV2_DROPPED_KEYS = frozenset({"mask_token"})
_DINOV2_RENAMES = (
    (re.compile(r"^(blocks\.\d+\.mlp\.)w12\."), r"\1fc1."),  # ViT-g SwiGLU
    (re.compile(r"^(blocks\.\d+\.mlp\.)w3\."), r"\1fc2."),
)


class WeightsNotFoundError(FileNotFoundError):
    """No checkpoint file at any of the paths tried (listed in the message and `.tried`)."""

    def __init__(self, name: str, tried: list[Path], hint: str = "") -> None:
        self.name, self.tried = name, tried
        paths = "\n".join(f"  - {p}" for p in tried)
        super().__init__(f"weights for {name!r} not found; tried:\n{paths}{hint}")


class WeightsChecksumError(ValueError):
    """A checkpoint file's sha256 differs from the published value."""


class WeightsFormatError(ValueError):
    """A checkpoint's keys or shapes do not match the model (strict loading)."""


class WeightsDownloadError(RuntimeError):
    """An explicit download failed (no network, HTTP error, or checksum mismatch)."""


@dataclass(frozen=True)
class EncoderSpec:
    """Input contract and weight source of one encoder (in the spirit of timm's PretrainedCfg).

    Attributes:
        name: registry name, e.g. ``"sam_vit_h"``.
        family: ``"sam"``, ``"sam2"`` (mask engines), ``"dinov2"`` or ``"dinov3"`` (feature
            engines).
        input_size: side of the square network input in pixels (SAM and SAM 2.1 1024, DINOv2
            518, DINOv3 592).
        patch_size: patch side in pixels (SAM 16, SAM 2.1's embedding stride 16, DINOv2 14,
            DINOv3 16).
        mean, std: per-channel normalisation, in the units of the network input (SAM: 0-255,
            SAM 2.1, DINOv2, DINOv3: 0-1).
        out_channels: channels of the output (SAM embedding 256, SAM 2.1 packed 1024; token
            width C of DINOv2 / DINOv3).
        filename: official checkpoint file name, None for test-only encoders.
        url: official download URL, None for test-only encoders.
        sha256: published sha256 of the official file, None when unknown or test-only.
        sha256_prefix: leading hex digits of the sha256 carried by the official file name
            (torch.hub's ``name-<hash>.pth`` convention; DINOv3), None otherwise.
        state_key: the key under which the file holds its state dict (SAM 2.1: ``"model"``),
            None for a plain state dict.
    """

    name: str
    family: str
    input_size: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    out_channels: int
    filename: str | None = None
    url: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    state_key: str | None = None

    @property
    def grid(self) -> int:
        """Side of the patch grid (feature engines: input_size / patch_size; DINOv2 37)."""
        return self.input_size // self.patch_size


def recorded_sha256_path(path: Path) -> Path:
    """Where the sha256 recorded at install of a checkpoint without a published one lives."""
    return path.with_name(f"{path.name}.sha256")


def record_sha256(path: Path, digest: str | None = None) -> str:
    """Record the sha256 of an installed checkpoint next to it (``<file>.sha256``)."""
    digest = digest or file_sha256(path)
    recorded_sha256_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def recorded_sha256(path: Path) -> str | None:
    """The sha256 recorded at install (`record_sha256`), None when none was recorded."""
    side = recorded_sha256_path(path)
    if not side.is_file():
        return None
    return side.read_text().split()[0] if side.read_text().strip() else None


def expected_sha256(spec: EncoderSpec, path: Path) -> tuple[str | None, str]:
    """(expected sha256, its source: ``"published"``, ``"recorded"`` or ``"none"``)."""
    if spec.sha256 is not None:
        return spec.sha256, "published"
    recorded = recorded_sha256(path)
    return (recorded, "recorded") if recorded else (None, "none")


def check_sha256_prefix(spec: EncoderSpec, digest: str, path: Path) -> None:
    """Raise WeightsChecksumError when the file-name hash prefix (DINOv3) does not match."""
    if spec.sha256_prefix is not None and not digest.startswith(spec.sha256_prefix):
        raise WeightsChecksumError(
            f"{path}: sha256 {digest} does not start with {spec.sha256_prefix}, the hash in "
            "its official file name; the file is corrupt, truncated or not the official one"
        )


def default_model_dirs(model_dir: Path | str | None = None) -> list[Path]:
    """Directories searched for checkpoints, in order.

    Args:
        model_dir: explicit directory; when given it is the only one searched.

    Returns:
        ``[model_dir]``, else ``[$MODEL_DIR]`` when set, else ``[./models]``; then the torch hub
        cache (``$TORCH_HOME/hub/checkpoints``), where ``torch.hub`` keeps DINOv2 files.
    """
    if model_dir is not None:
        return [Path(model_dir)]
    env = os.environ.get("MODEL_DIR")
    return [Path(env) if env else Path("models"), Path(torch.hub.get_dir()) / "checkpoints"]


def resolve_checkpoint(spec: EncoderSpec, model_dir: Path | str | None = None) -> Path:
    """Find the official checkpoint file of `spec`.

    Raises:
        WeightsNotFoundError: listing every path tried, with how to get the file.
    """
    if spec.filename is None:
        raise WeightsNotFoundError(spec.name, [], "\n(test-only encoder: no weights exist)")
    tried = [d / spec.filename for d in default_model_dirs(model_dir)]
    for path in tried:
        if path.is_file():
            return path
    hint = (
        f"\nGet it with `python -m gfsam weights download --model-dir DIR {spec.name}` or "
        f"download {spec.url} into the model directory."
    )
    raise WeightsNotFoundError(spec.name, tried, hint)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    """Raise WeightsChecksumError unless `path` hashes to `expected` (skipped when None)."""
    if expected is None:
        logger.warning("no published sha256 for %s; integrity not verified", path)
        return
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsChecksumError(
            f"{path}: sha256 {actual} != published {expected}; the file "
            "is corrupt, truncated or not the official checkpoint"
        )


def read_state_dict(
    path: Path, sha256: str | None = None, *, state_key: str | None = None
) -> dict[str, Tensor]:
    """Load a checkpoint's tensors on the CPU, without unpickling code.

    Args:
        path: checkpoint file (a plain state dict, as Meta publishes them).
        sha256: expected hex digest; None skips the check.
        state_key: the key holding the state dict (SAM 2.1 files: ``"model"``), or None.

    Raises:
        WeightsChecksumError, WeightsFormatError.
    """
    if sha256 is not None:
        verify_sha256(path, sha256)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state_key is not None:
        if not isinstance(state, Mapping) or state_key not in state:
            raise WeightsFormatError(f"{path}: expected a dict holding {state_key!r}")
        state = state[state_key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsFormatError(f"{path}: expected a flat state dict of tensors")
    return dict(state)


def dinov2_to_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official DINOv2 state dict (``dinov2_vit*14_pretrain.pth``) to timm's names.

    ViT-S/B/L use the same names in both; ViT-g's SwiGLU ``mlp.w12``/``mlp.w3`` become
    ``mlp.fc1``/``mlp.fc2`` (same packing: the first half of w12 is the gate). Only the keys in
    `DINOV2_DROPPED_KEYS` are dropped; everything else must then match the model strictly.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in DINOV2_DROPPED_KEYS:
            continue
        for pattern, repl in _DINOV2_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def read_checkpoint(
    checkpoint: Path | None, spec: EncoderSpec, *, verify: bool = True
) -> dict[str, Tensor] | None:
    """The state dict of an official checkpoint, sha256-checked first; None for random init.

    Raises:
        WeightsChecksumError, WeightsFormatError.
    """
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if verify:
        expected, source = expected_sha256(spec, path)
        if spec.sha256_prefix is not None and source != "published":
            check_sha256_prefix(spec, expected or file_sha256(path), path)
        if source == "none" and spec.sha256 is None:
            logger.warning(
                "no published sha256 for %s; record the installed file's with "
                "`python -m gfsam weights record %s` to check it on later loads",
                path,
                spec.name,
            )
        else:
            verify_sha256(path, expected)
    return read_state_dict(path, state_key=spec.state_key)


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """`module.load_state_dict(state, strict=True)` with a message naming every bad key.

    Raises:
        WeightsFormatError: missing, unexpected or wrongly shaped keys.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        raise WeightsFormatError(
            f"{source} does not match the model: missing={missing[:8]} "
            f"({len(missing)}), unexpected={unexpected[:8]} "
            f"({len(unexpected)}), shape mismatches={shapes[:8]}"
        )
    module.load_state_dict(state, strict=True)


def download_weights(
    names: Iterable[str],
    model_dir: Path | str,
    specs: Mapping[str, EncoderSpec],
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> list[Path]:
    """Download official checkpoints into `model_dir` (explicit step; never called by jobs).

    Each file is streamed to a temporary file in `model_dir`, hashed on the way, verified
    against the published sha256, then renamed atomically. Existing verified files are kept.

    Raises:
        KeyError: unknown name. WeightsDownloadError: network failure or checksum mismatch.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        spec = specs[name]
        if spec.url is None or spec.filename is None:
            raise WeightsDownloadError(f"{name} is a test-only encoder without weights")
        target = model_dir / spec.filename
        expected, _ = expected_sha256(spec, target)
        if target.is_file() and (expected is None or file_sha256(target) == expected):
            logger.info("%s already present at %s", name, target)
        else:
            _download_one(spec, target, timeout_s)
        if spec.sha256 is None and recorded_sha256(target) is None:
            digest = record_sha256(target)  # no published value: trust on first use
            logger.info("no published sha256 for %s; recorded %s", name, digest)
        paths.append(target)
    return paths


def _download_one(spec: EncoderSpec, target: Path, timeout_s: float) -> None:
    assert spec.url is not None
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    logger.info("downloading %s -> %s", spec.url, target)
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout_s) as resp, open(part, "wb") as f:
            for block in iter(lambda: resp.read(CHUNK_BYTES), b""):
                digest.update(block)
                f.write(block)
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            raise WeightsDownloadError(
                f"{spec.url}: sha256 {digest.hexdigest()} != published "
                f"{spec.sha256}; file discarded"
            )
        try:
            check_sha256_prefix(spec, digest.hexdigest(), target)
        except WeightsChecksumError as exc:
            raise WeightsDownloadError(f"{spec.url}: {exc}; file discarded") from exc
        os.replace(part, target)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsDownloadError(
            f"could not download {spec.url} ({exc}); download it on a machine with internet "
            f"access and copy it to {target}"
        ) from exc
    finally:
        part.unlink(missing_ok=True)
