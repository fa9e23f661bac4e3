"""Test doubles (like rq's tests/fixtures.py): a deterministic fake GF-SAM pipeline, and a tiny
in-memory Label Studio REST server implementing the handful of endpoints the workers call.

The fake LS is for job-level tests only; the real-LS contract is covered by tests/test_e2e.py.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, ImageOps

from gfsam.decoded import DecodedMasks
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.find_all import decode_boxes_one_by_one
from gfsam.types import GFSAMConfig, Segmentation
from worker.contract import SegmentationModel
from worker.labelstudio.brush_rle import mask_to_rle
from worker.runtime import Model

TOKEN = "test-token"

# --------------------------------------------------------------------------- fake pipeline

FAKE_SAM, FAKE_DINO = "fake_sam", "fake_dino"
# What the fake's encodings carry instead of features (visible in every blob): no tokens, no
# embedding. The split assignment and discovery have nothing to read there, so the services
# built on the fake run ASSIGN=argmax and DISCOVER=false (`FAKE_SETTINGS`); the oracle pipeline
# below runs both for real.
NO_TOKENS = np.zeros((1, 1), dtype=np.float32)  # [T=1, C=1]
NO_EMBEDDING = np.zeros((1, 1, 1), dtype=np.float32)
FAKE_SETTINGS = {"assign": "argmax", "discover": False}


def no_segmentation() -> Segmentation:
    """The token-level result of a model that has none: no points, no maps."""
    none = np.zeros((0,), dtype=np.int64)
    return Segmentation(
        mask=np.zeros((0, 0), dtype=bool),
        points_xy=np.zeros((0, 2), dtype=np.int64),
        prompt_xy=np.zeros((0, 2), dtype=np.int64),
        cluster=none,
        positive=none.astype(bool),
        consistent=none.astype(bool),
        state=none,
        cls_score=none.astype(np.float32),
        fallback=False,
        abstained=False,
    )


@dataclass
class FakePipeline:
    """The worker's model contract (`worker.contract.SegmentationModel`) met trivially: masks
    depend only on image sizes and shot areas; the encodings are gfsam's own types carrying no
    features (`NO_TOKENS`, `NO_EMBEDDING`), `decoded` is accepted and never filled (nothing is
    decoded), `sam` is `FakeSam` (disks around the clicks).

    A label predicts a centred box covering the mean area of its references, shifted right by
    its position among the labels (so two labels overlap); the label "Absent" always abstains.
    """

    calls: dict[str, int] = field(
        default_factory=lambda: {"target": 0, "reference": 0, "predict": 0, "mask_engine": 0}
    )
    sam: FakeSam = field(default_factory=lambda: FakeSam())
    config: GFSAMConfig = field(default_factory=GFSAMConfig)
    mask_precisions: list[str | None] = field(default_factory=list)  # of encode_mask_engine

    def encode_target(self, image: np.ndarray) -> TargetEncoding:
        self.calls["target"] += 1
        size = (int(image.shape[0]), int(image.shape[1]))
        return TargetEncoding(NO_EMBEDDING, NO_TOKENS, size, FAKE_SAM, FAKE_DINO)

    def encode_targets(
        self, images: Sequence[np.ndarray], *, batch_size: int = 8
    ) -> list[TargetEncoding]:
        return [self.encode_target(image) for image in images]

    def encode_mask_engine(self, image: np.ndarray, *, precision: str | None = None) -> np.ndarray:
        self.calls["mask_engine"] += 1
        self.mask_precisions.append(precision)
        return NO_EMBEDDING

    def encode_reference(self, image: np.ndarray, mask: np.ndarray) -> Reference:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
        if not mask.any():
            raise ValueError("empty reference mask")
        self.calls["reference"] += 1
        size = (int(image.shape[0]), int(image.shape[1]))
        one = np.ones(1, dtype=np.float32)
        return Reference(NO_TOKENS, one, one * 0, int(mask.sum()), size, FAKE_DINO)

    def predict_labels(
        self,
        target: TargetEncoding,
        references: Mapping[str, Sequence[Reference]],
        *,
        decoded: DecodedMasks | None = None,
    ) -> dict[str, Prediction]:
        self.calls["predict"] += 1
        height, width = target.image_size
        out = {}
        for i, (label, refs) in enumerate(references.items()):
            mask = np.zeros((height, width), dtype=bool)
            if label == "Absent":
                out[label] = Prediction(mask, 0.1, True, False, no_segmentation())
                continue
            area = float(np.mean([r.mask_area / (r.image_size[0] * r.image_size[1]) for r in refs]))
            side = np.sqrt(area)
            h, w = max(1, int(height * side)), max(1, int(width * side))
            y0 = (height - h) // 2
            x0 = min(width - w, (width - w) // 2 + i * w // 4)
            mask[y0 : y0 + h, x0 : x0 + w] = True
            score = round(0.5 + 0.1 * len(refs) - 0.05 * i, 4)
            out[label] = Prediction(mask, score, False, False, no_segmentation())
        return out


def fake_load_image(data: bytes) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:
        raise ValueError(f"cannot decode image bytes ({len(data)} B): {exc}") from exc


def fake_model(pipeline: SegmentationModel | None = None) -> Model:
    return Model(pipeline or FakePipeline(), fake_load_image, key="fake")


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def brush_region(
    mask: np.ndarray, label: str, from_name: str = "tag", to_name: str = "image"
) -> dict[str, Any]:
    """An annotation result region as the LS frontend saves it (alpha 255 on the mask)."""
    return {
        "id": f"r{label}",
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "origin": "manual",
        "original_width": int(mask.shape[1]),
        "original_height": int(mask.shape[0]),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
    }


def box_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# --------------------------------------------------------------------------- fake Label Studio


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class FakeLabelStudio:
    """In-memory LS: tasks, annotations, predictions and media behind the REST paths we use."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.annotations: dict[int, dict[str, Any]] = {}
        self.predictions: dict[int, dict[str, Any]] = {}
        self.media: dict[str, bytes] = {}
        self.posts: list[dict[str, Any]] = []  # every accepted POST /api/predictions/ body
        # GET /api/projects/{id}/: label config per project (default: the setup.json fixture's);
        # `projects_known` None = every id exists, else only these.
        self.configs: dict[int, str] = {}
        self.projects_known: set[int] | None = None
        self.down = False  # answer 503 to everything
        self.delays = {"media": 0.0, "post": 0.0}  # seconds to stall before answering
        self.started = {"media": threading.Event(), "post": threading.Event()}
        self.calls = {"media": 0, "post": 0}
        self.media_hits: dict[str, int] = {}  # GETs per media path
        self.lock = threading.Lock()
        self._ids = {"task": 0, "annotation": 0, "prediction": 0}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeLabelStudio:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def add_task(self, project: int, image: bytes | None, name: str = "img.png") -> dict:
        with self.lock:
            t = self._next("task")
            path = f"/data/upload/{project}/{t:04d}-{name}"
            if image is not None:
                self.media[path] = image
            task = {"id": t, "project": project, "data": {"image": path}}
            self.tasks[t] = task
            return task

    def annotate(
        self, task: int, result: list[dict], annotation: int | None = None, **extra: Any
    ) -> dict:
        """Create (or, with an id, update) an annotation; returns the LS annotation object."""
        with self.lock:
            a = annotation or self._next("annotation")
            ann = {
                "id": a,
                "task": task,
                "project": self.tasks[task]["project"],
                "result": result,
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": self.annotations.get(a, {}).get("created_at", _now()),
                "updated_at": _now(),
                "parent_prediction": None,
                **extra,
            }
            self.annotations[a] = ann
            return ann

    def delete_annotation(self, annotation: int) -> None:
        with self.lock:
            self.annotations.pop(annotation, None)

    def task_view(self, t: int) -> dict[str, Any]:
        anns = [a for a in self.annotations.values() if a["task"] == t]
        done = [a for a in anns if not a["was_cancelled"]]
        return {
            **self.tasks[t],
            "total_annotations": len(done),
            "cancelled_annotations": len(anns) - len(done),
            "is_labeled": bool(done),
        }

    def predictions_for(self, t: int) -> list[dict[str, Any]]:
        return [p for p in self.predictions.values() if p["task"] == t]

    # --- request handling (called by the handler thread) ---------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        kind = "media" if path.startswith("/data/") else "post" if method == "POST" else None
        if kind == "media":
            self.media_hits[path] = self.media_hits.get(path, 0) + 1
        if kind is not None:
            self.calls[kind] += 1
            self.started[kind].set()
            time.sleep(self.delays[kind])  # the work completes even if the client went away
        with self.lock:
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
        parts = [x for x in path.split("/") if x]
        if method == "GET" and path.startswith("/data/upload/"):
            return (200, self.media[path]) if path in self.media else (404, {"detail": "nf"})
        if method == "GET" and parts == ["api", "tasks"]:
            p = int(query["project"][0])
            page, size = int(query.get("page", ["1"])[0]), int(query.get("page_size", ["100"])[0])
            ids = sorted(t for t, task in self.tasks.items() if task["project"] == p)
            if "query" in query:  # LS's data-manager selection: {"selectedItems": {...}}
                picked = json.loads(query["query"][0]).get("selectedItems", {})
                if not picked.get("all", True):
                    ids = [t for t in ids if t in set(picked.get("included", []))]
            chunk = ids[(page - 1) * size : page * size]
            return 200, {"tasks": [self.task_view(t) for t in chunk], "total": len(ids)}
        if method == "GET" and parts[:2] == ["api", "tasks"] and len(parts) == 3:
            task = self.tasks.get(int(parts[2]))
            return (200, self.task_view(task["id"])) if task else (404, {"detail": "Not found."})
        if method == "GET" and parts[:2] == ["api", "projects"] and len(parts) == 3:
            p = int(parts[2])
            if self.projects_known is not None and p not in self.projects_known:
                return 404, {"detail": "Not found."}
            return 200, {"id": p, "label_config": self.configs.get(p, default_config())}
        if method == "PATCH" and parts[:2] == ["api", "projects"] and len(parts) == 3:
            self.configs[int(parts[2])] = body["label_config"]  # a promotion (issue 11)
            return 200, {"id": int(parts[2]), "label_config": body["label_config"]}
        if method == "GET" and parts[:2] == ["api", "tasks"] and parts[3:] == ["annotations"]:
            t = int(parts[2])
            return 200, [a for a in self.annotations.values() if a["task"] == t]
        if method == "GET" and parts[:2] == ["api", "annotations"] and len(parts) == 3:
            ann = self.annotations.get(int(parts[2]))
            return (200, ann) if ann else (404, {"detail": "Not found."})
        if parts[:2] == ["api", "predictions"]:
            return self._predictions(method, parts, query, body)
        if method == "GET" and parts[:2] == ["api", "projects"] and parts[3:] == ["model-versions"]:
            p, counts = int(parts[2]), {}
            for pred in self.predictions.values():
                if pred["project"] == p:
                    counts[pred["model_version"]] = counts.get(pred["model_version"], 0) + 1
            return 200, counts
        return 404, {"detail": f"fake LS has no {method} {path}"}

    def _predictions(
        self, method: str, parts: list[str], query: dict, body: Any
    ) -> tuple[int, Any]:
        if method == "GET" and len(parts) == 3:
            pred = self.predictions.get(int(parts[2]))
            return (200, pred) if pred else (404, {"detail": "Not found."})
        if method == "GET":
            return 200, self.predictions_for(int(query["task"][0]))
        if method == "POST":
            if body.get("task") not in self.tasks or body.get("model_version") is None:
                return 400, {"detail": "bad prediction"}
            i = self._next("prediction")
            pred = {"id": i, "project": self.tasks[body["task"]]["project"], **body}
            self.predictions[i] = pred
            self.posts.append(body)
            return 201, pred
        return 405, {"detail": "method not allowed"}


def _handler(ls: FakeLabelStudio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if ls.down:
                status, payload = 503, {"detail": "down"}
            elif self.headers.get("Authorization") != f"Token {TOKEN}":
                status, payload = 401, {"detail": "auth"}
            else:
                body = json.loads(raw) if raw else None
                status, payload = ls.handle(method, url.path, parse_qs(url.query), body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            ctype = "image/png" if isinstance(payload, bytes) else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_PATCH(self) -> None:  # noqa: N802
            self._serve("PATCH")

    return Handler


def default_config() -> str:
    """The label config of tests/fixtures/ls_requests/setup.json (the fake LS's default)."""
    path = Path(__file__).parent / "fixtures" / "ls_requests" / "setup.json"
    return str(json.loads(path.read_text())["schema"])


# --------------------------------------------------------------------------- fake SAM prompts


@dataclass
class FakeSam:
    """`SamEncoder.decode_prompts` stand-in: a disk of `radius` frame pixels around each positive
    point, cut by disks around negative points, clipped to the box, OR-ed with a mask prompt.
    The predicted IoU is 0.9 (multimask) or 0.8. `calls` records each call's arguments."""

    radius: int = 64
    calls: list[dict[str, Any]] = field(default_factory=list)
    hold: threading.Event | None = None  # when set by a test: calls wait until it is set

    def decode_prompts(
        self,
        embedding: Any,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        *,
        multimask: bool = False,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        if self.hold is not None:
            self.hold.wait(30)
        self.calls.append(
            {
                "points": points_xy,
                "labels": point_labels,
                "box": box_xyxy,
                "mask": mask_logits,
                "multimask": multimask,
            }
        )
        yy, xx = np.mgrid[0:1024, 0:1024]
        mask = np.zeros((1024, 1024), dtype=bool)
        pts = [] if points_xy is None else list(np.asarray(points_xy))
        labels = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels)
        for (x, y), lab in zip(pts, labels, strict=True):
            disk = (xx - x) ** 2 + (yy - y) ** 2 <= self.radius**2
            mask = mask | disk if lab else mask & ~disk
        if box_xyxy is not None:
            x0, y0, x1, y1 = np.asarray(box_xyxy)
            inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
            mask = mask & inside if mask.any() else inside
        if mask_logits is not None:
            prior = np.repeat(np.repeat(np.asarray(mask_logits) > 0, 4, 0), 4, 1)
            mask = mask | prior
        low = mask.reshape(256, 4, 256, 4).mean(axis=(1, 3)).astype(np.float32) * 2 - 1
        return mask, 0.9 if multimask else 0.8, low

    def decode_boxes(
        self, embedding: Any, points_xy: np.ndarray, boxes_xyxy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`decode_prompts` of each (point, box) pair (one recorded call each)."""
        return decode_boxes_one_by_one(self.decode_prompts, embedding, points_xy, boxes_xyxy)


# --------------------------------------------------------------------------- oracle pipeline


@dataclass
class OraclePipeline:
    """The real token-level GF-SAM (PNA, PMC, gates) on oracle encoders (`gfsam.eval.oracle`)
    behind the worker's model contract, so `ASSIGN=split` and discovery run without weights.

    An image's red channel is its class-id map (0 background): tokens and SAM masks come from
    it, so a PNG made by `class_png` is a scene with known classes. `params.rho` makes every
    even class look like the odd class before it (a look-alike of an undefined class).
    """

    params: Any = None  # gfsam.eval.oracle.OracleParams; default sigma 0.1, rho 0.6
    calls: dict[str, int] = field(
        default_factory=lambda: {"target": 0, "reference": 0, "predict": 0}
    )

    def __post_init__(self) -> None:
        from gfsam.eval.models import OracleModel
        from gfsam.eval.oracle import OracleParams

        self.params = self.params or OracleParams(sigma=0.1, rho=0.6)
        self.oracle = OracleModel(self.params)
        self.config = self.oracle.config

    def _tokens(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import hashlib

        from gfsam.eval.oracle import frame_labels

        labels = image[..., 0].astype(np.int32)
        framed = frame_labels(labels)
        key = hashlib.sha1(labels.tobytes()).hexdigest()
        return framed, self.oracle.dino.tokens(framed, key)

    @property
    def sam(self) -> Any:
        """The oracle SAM (`decode_prompts` on box + points: discovery, issue 11)."""
        return self.oracle.sam

    def encode_target(self, image: np.ndarray) -> TargetEncoding:
        self.calls["target"] += 1
        framed, tokens = self._tokens(image)
        sam, dino = self.oracle.sam, self.oracle.dino
        return TargetEncoding(sam.embed(framed), tokens, image.shape[:2], sam.name, dino.name)

    def encode_reference(self, image: np.ndarray, mask: np.ndarray) -> Reference:
        from gfsam.image import mask_to_frame
        from gfsam.points import reference_weights

        if mask.shape != image.shape[:2] or not mask.any():
            raise ValueError(f"bad reference mask {mask.shape} for image {image.shape[:2]}")
        self.calls["reference"] += 1
        _, tokens = self._tokens(image)
        fg, bg = reference_weights(mask_to_frame(mask))
        size = image.shape[:2]
        return Reference(tokens, fg.numpy(), bg.numpy(), int(mask.sum()), size, "oracle_dino")

    def encode_targets(
        self, images: Sequence[np.ndarray], *, batch_size: int = 8
    ) -> list[TargetEncoding]:
        return [self.encode_target(image) for image in images]

    def encode_mask_engine(self, image: np.ndarray, *, precision: str | None = None) -> np.ndarray:
        return self.oracle.sam.embed(self._tokens(image)[0])

    def predict_labels(
        self,
        target: TargetEncoding,
        references: Mapping[str, Sequence[Reference]],
        *,
        decoded: DecodedMasks | None = None,
    ) -> dict[str, Prediction]:
        """Every label on the oracle; `decoded` is not used (an oracle decode costs nothing)."""
        self.calls["predict"] += 1
        return {label: self.oracle.predict(target, refs) for label, refs in references.items()}


def oracle_model(pipeline: OraclePipeline | None = None) -> Model:
    """A worker `Model` around an `OraclePipeline` (real gfsam encodings and codecs)."""
    return Model(pipeline or OraclePipeline(), fake_load_image, key="oracle")


def class_png(labels: np.ndarray) -> bytes:
    """A PNG whose red channel is the class-id map `labels` (int [H, W], ids < 256)."""
    pixels = np.zeros((*labels.shape, 3), dtype=np.uint8)
    pixels[..., 0] = labels
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class MediaServer:
    """A plain HTTP server for media tests (issue 7): `routes[path]` = (status, headers, body);
    `drip_s` > 0 sends the body one byte at a time with that pause, `header_drip_s` > 0 the
    status line and headers. Counts requests per path."""

    def __init__(self, drip_s: float = 0.0, header_drip_s: float = 0.0) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: dict[str, int] = {}
        self.drip_s = drip_s
        self.header_drip_s = header_drip_s
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _media_handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _media_handler(media: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            media.hits[path] = media.hits.get(path, 0) + 1
            status, headers, body = media.routes.get(path, (404, {}, b"nf"))
            if media.header_drip_s > 0:
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                try:
                    for i in range(len(head)):
                        self.wfile.write(head[i : i + 1])
                        self.wfile.flush()
                        time.sleep(media.header_drip_s)
                    self.wfile.write(body)
                except OSError:
                    pass
                return
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                if media.drip_s <= 0:
                    self.wfile.write(body)
                    return
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(media.drip_s)
            except OSError:
                pass

    return Handler


# --------------------------------------------------------------------------- null-cost split model


def image_key(image: np.ndarray) -> str:
    """Identity of a decoded image for `NullSplitPipeline` (a sparse sample: cheap)."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(image[::7, ::7]).tobytes()).hexdigest()


@dataclass
class _Scene:
    """What `NullSplitPipeline` precomputed for one image (nothing of it costs at job time)."""

    index: int
    framed: np.ndarray  # uint8 [S, S] class ids in the 1024 frame
    cells: np.ndarray  # int64 [T] class id per grid cell
    prediction: Prediction  # the image's largest class, with a token-level Segmentation
    class_masks: dict[int, np.ndarray] = field(default_factory=dict)  # id -> bool [S, S], lazy


@dataclass
class NullSam:
    """A prompt decoder that costs (almost) nothing: the ground-truth class under the first
    positive point, clipped to the box, from the scene the embedding names (`NullSplitPipeline`)."""

    scenes: list[_Scene] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0  # time spent inside `decode_prompts`

    def decode_prompts(
        self,
        embedding: Any,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        *,
        multimask: bool = False,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        from gfsam.types import FRAME

        started = time.perf_counter()
        self.calls += 1
        framed = self.scenes[int(np.asarray(embedding).reshape(-1)[0])].framed
        if points_xy is not None and len(points_xy):
            x, y = np.clip(np.asarray(points_xy)[0].astype(np.int64), 0, FRAME - 1)
            mask = framed == framed[y, x]
        else:
            mask = np.ones((FRAME, FRAME), dtype=bool)
        if box_xyxy is not None:
            x0, y0, x1, y1 = np.clip(np.asarray(box_xyxy).astype(np.int64), 0, FRAME)
            mask[:y0], mask[y1:], mask[:, :x0], mask[:, x1:] = False, False, False, False
        self.seconds += time.perf_counter() - started
        return mask, 0.9, np.zeros((256, 256), dtype=np.float32)

    def decode_boxes(
        self, embedding: Any, points_xy: np.ndarray, boxes_xyxy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`decode_prompts` of each (point, box) pair."""
        return decode_boxes_one_by_one(self.decode_prompts, embedding, points_xy, boxes_xyxy)


@dataclass
class NullSplitPipeline:
    """A null-cost model that meets the worker's contract AND carries what the split assignment
    and discovery read, at real sizes (issue 17): tokens [1369, 1024] float32 (ViT-L), a SAM-sized
    embedding [256, 64, 64] float32, and per label a `Prediction` whose `Segmentation` holds
    the mask, gated prompts on it and a ``filtered`` map; `sam` returns ground-truth masks.

    Everything is precomputed by `add` from each image's ground-truth class map (register the
    images before the run); a job's model calls only look it up and copy arrays. The
    "prediction" of every label is the image's largest class (prompts: up to `prompts` cells
    at least half inside it), decoded into the target's `DecodedMasks` as a real model does
    (counted in the model's time), so carving reads them from the store. Tokens: one
    fixed random vector per class id plus a fixed per-cell noise (same class, similar tokens;
    the split similarity is meaningful).
    """

    prompts: int = 32
    dim: int = 1024
    config: GFSAMConfig = field(default_factory=GFSAMConfig)
    sam: NullSam = field(default_factory=NullSam)
    calls: dict[str, int] = field(
        default_factory=lambda: {"target": 0, "reference": 0, "predict": 0}
    )
    seconds: float = 0.0  # time spent inside this model's own calls (to report beside a rate)
    _keys: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from gfsam.types import TOKENS

        rng = np.random.default_rng(0)
        self._classes = rng.standard_normal((256, self.dim)).astype(np.float32)
        self._noise = 0.5 * rng.standard_normal((TOKENS, self.dim)).astype(np.float32)

    def add(self, image: np.ndarray, classes: np.ndarray) -> None:
        """Register an image (uint8 RGB as the worker decodes it) with its class map [H, W]."""
        import torch

        from gfsam.assign import cell_fractions
        from gfsam.eval.oracle import frame_labels
        from gfsam.image import mask_from_frame
        from gfsam.types import FRAME, GRID

        framed = frame_labels(np.where(classes == 255, 0, classes)).astype(np.uint8)
        centre = ((np.arange(GRID) + 0.5) * FRAME / GRID).astype(np.int64)
        cells = framed[centre][:, centre].astype(np.int64).ravel()  # (T,) as [y, x]
        ids, counts = np.unique(framed[framed > 0], return_counts=True)
        mask = framed == (ids[np.argmax(counts)] if ids.size else 0)
        frac = cell_fractions(mask[None])[0].reshape(GRID, GRID)  # (G, G) [y, x]
        ys, xs = np.nonzero(frac >= 0.5)
        if not len(xs):
            ys, xs = np.unravel_index(np.argmax(frac)[None], frac.shape)
        pick = np.unique(np.linspace(0, len(xs) - 1, min(self.prompts, len(xs))).astype(int))
        order = np.lexsort((ys[pick], xs[pick]))  # x-major, as GF-SAM selects
        points = np.stack([xs[pick][order], ys[pick][order]], axis=1).astype(np.int64)  # (P, 2)
        p = len(points)
        seg = Segmentation(
            mask=mask,
            points_xy=points,
            prompt_xy=((points + 0.5) * FRAME / GRID).astype(np.int64),
            cluster=np.zeros(p, dtype=np.int64),
            positive=np.ones(p, dtype=bool),
            consistent=np.ones(p, dtype=bool),
            state=np.ones(p, dtype=np.int64),
            cls_score=np.ones(p, dtype=np.float32),
            fallback=False,
            abstained=False,
            maps={"filtered": frac.astype(np.float32)},
            score=float(frac[points[:, 1], points[:, 0]].mean()),
        )
        size = (int(image.shape[0]), int(image.shape[1]))
        pred = Prediction(mask_from_frame(torch.from_numpy(mask), size), 0.9, False, False, seg)
        self._keys[image_key(image)] = len(self.sam.scenes)
        self.sam.scenes.append(_Scene(len(self.sam.scenes), framed, cells, pred))

    def _scene(self, image: np.ndarray) -> _Scene:
        return self.sam.scenes[self._keys[image_key(image)]]

    def _tokens(self, scene: _Scene) -> np.ndarray:
        return self._classes[scene.cells] + self._noise  # (T, C) float32

    def encode_target(self, image: np.ndarray) -> TargetEncoding:
        started = time.perf_counter()
        self.calls["target"] += 1
        scene = self._scene(image)
        embedding = np.zeros((256, 64, 64), dtype=np.float32)  # SAM ViT's size
        embedding[0, 0, 0] = scene.index
        size = (int(image.shape[0]), int(image.shape[1]))
        out = TargetEncoding(embedding, self._tokens(scene), size, "null_sam", "null_dino")
        self.seconds += time.perf_counter() - started
        return out

    def encode_mask_engine(self, image: np.ndarray, *, precision: str | None = None) -> np.ndarray:
        return self.encode_target(image).embedding

    def encode_targets(
        self, images: Sequence[np.ndarray], *, batch_size: int = 8
    ) -> list[TargetEncoding]:
        return [self.encode_target(image) for image in images]

    def encode_reference(self, image: np.ndarray, mask: np.ndarray) -> Reference:
        from gfsam.image import mask_to_frame
        from gfsam.points import reference_weights

        if mask.shape != image.shape[:2] or not mask.any():
            raise ValueError(f"bad reference mask {mask.shape} for image {image.shape[:2]}")
        started = time.perf_counter()
        self.calls["reference"] += 1
        fg, bg = reference_weights(mask_to_frame(mask))
        size = (int(image.shape[0]), int(image.shape[1]))
        tokens = self._tokens(self._scene(image))
        ref = Reference(tokens, fg.numpy(), bg.numpy(), int(mask.sum()), size, "null_dino")
        self.seconds += time.perf_counter() - started
        return ref

    def predict_labels(
        self,
        target: TargetEncoding,
        references: Mapping[str, Sequence[Reference]],
        *,
        decoded: DecodedMasks | None = None,
    ) -> dict[str, Prediction]:
        """Every label: the scene's prediction; its prompts' masks go into `decoded` (bound to
        the scene), as a real model's decodes do, so the assignment's carving reads them."""
        import torch

        started = time.perf_counter()
        self.calls["predict"] += 1
        scene = self.sam.scenes[int(target.embedding.reshape(-1)[0])]
        pred = scene.prediction
        if decoded is not None and references:
            decoded.bind(f"null_sam/fp32/{scene.index}")
            # the prompts' masks into the store, as a real model's decodes put them there (the
            # graph stage's unpacked copy is the model's business, and costs a null model nothing);
            # what `sam.decode_prompts` answers for one positive point: the class under it
            xy = pred.segmentation.prompt_xy  # (P, 2)
            ids = scene.framed[xy[:, 1], xy[:, 0]]  # (P,)
            for c in np.unique(ids).tolist():
                if c not in scene.class_masks:
                    scene.class_masks[c] = scene.framed == c  # (S, S)
                mask = scene.class_masks[c]

                def decode(pts: np.ndarray, mask: np.ndarray = mask) -> torch.Tensor:
                    return torch.from_numpy(mask).expand(len(pts), *mask.shape)  # (N, S, S)

                decoded.packed_masks(xy[ids == c], decode)
        out = {label: pred for label in references}
        self.seconds += time.perf_counter() - started
        return out
