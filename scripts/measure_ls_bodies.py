"""Measure the /predict bodies a real Label Studio 1.23.2 sends (documents MAX_BODY_BYTES).

Starts Label Studio from `.lsvenv` (tests/lsserver.py), imports `--tasks` uploaded images,
connects a stub ML backend that records the Content-Length of every /predict, then runs the Data
Manager's "Retrieve Predictions" on all tasks (one request for every selected task) twice:

1. plain tasks (no annotations, no predictions);
2. heavy tasks: each with one brush annotation and one brush prediction of the full image size
   (LS puts the full `annotations` and `predictions` lists into every task of the body).

Prints, per run: requests, tasks per request, bytes of the biggest body, bytes per task.

    .venv/bin/python scripts/measure_ls_bodies.py            # 200 tasks
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from bootstrap import REPO
from PIL import Image

from tests.fakes import brush_region
from tests.lsserver import LabelStudio, free_port, start_label_studio

COCO = REPO.parent / "shared" / "assets" / "data" / "coco128_seg" / "images"
CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="Object"/></BrushLabels></View>'
)


class Stub:
    """A stub ML backend: answers /health, /setup, /webhook; records every /predict body size."""

    def __init__(self) -> None:
        self.bodies: list[tuple[int, int]] = []  # (Content-Length, tasks in the body)
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._reply({"status": "UP", "model_class": "stub"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.startswith("/predict"):
                    tasks = json.loads(raw).get("tasks", [])
                    stub.bodies.append((length, len(tasks)))
                    # items without `result`: LS stores nothing, the tasks stay as they were
                    self._reply({"results": [{"model_version": "stub"} for _ in tasks]})
                elif self.path.startswith("/setup"):
                    self._reply({"model_version": "stub"})
                else:
                    self._reply({})

        return Handler


def ellipse(h: int, w: int) -> np.ndarray:
    """A filled ellipse over most of the image (a typical object-sized brush)."""
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 <= 1.0


def retrieve(ls: LabelStudio, project: int, stub: Stub, label: str, n: int) -> None:
    """Run "Retrieve Predictions" on all tasks and print what the stub received."""
    stub.bodies.clear()
    started = time.monotonic()
    ls.retrieve_predictions(project)
    seconds = time.monotonic() - started
    sizes = [size for size, _ in stub.bodies]
    tasks = sum(count for _, count in stub.bodies)
    if not sizes:
        print(f"{label}: no /predict received")
        return
    print(
        f"{label}: {len(sizes)} /predict request(s) for {tasks} of {n} tasks "
        f"(tasks per request: {[c for _, c in stub.bodies][:5]}); biggest body {max(sizes):,} "
        f"bytes; total {sum(sizes):,} bytes; {sum(sizes) / max(tasks, 1):,.0f} bytes per task; "
        f"{seconds:.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    images = sorted(COCO.glob("*.jpg"))
    paths = [images[i % len(images)] for i in range(args.tasks)]
    stub = Stub()
    with start_label_studio(Path(tempfile.mkdtemp(prefix="gfsam-lsbodies-"))) as ls:
        print(f"Label Studio up in {ls.startup_s:.0f} s; stub backend on {stub.url}")
        project = int(ls.create_project(CONFIG)["id"])
        for i in range(0, len(paths), 50):
            ls.import_images(project, paths[i : i + 50])
        ls.connect_ml_backend(project, stub.url)
        tasks = ls.list_tasks(project)
        retrieve(ls, project, stub, "plain tasks", len(tasks))
        for task in tasks:  # one brush annotation and one brush prediction per task
            w, h = Image.open(ls.upload_file(task)).size
            region = brush_region(ellipse(h, w), "Object")
            ls.create_annotation(task["id"], [region])
            ls.create_prediction(task["id"], [region], model_version="other", score=0.5)
        retrieve(
            ls, project, stub, "annotated tasks (1 brush annotation + 1 prediction)", len(tasks)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
