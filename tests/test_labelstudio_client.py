"""worker.labelstudio.client.LabelStudioClient: against a stub server, then against a real Label
Studio."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.lsserver import LabelStudio, free_port
from worker.labelstudio.brush_rle import annotation_masks, masks_to_result
from worker.labelstudio.client import LabelStudioClient
from worker.labelstudio.errors import (
    LabelStudioAuthError,
    LabelStudioError,
    LabelStudioUnavailable,
    MediaNotFound,
    MediaTooLarge,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "data"
COCO = DATA / "coco128_seg"
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image">'
    '<Label value="Object"/><Label value="Background-thing"/></BrushLabels></View>'
)
PAYLOAD = bytes(range(256)) * 8  # 2 KiB


def fake_jwt(token_type: str, exp: float) -> str:
    """An unsigned JWT with the claims the client reads."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"token_type": token_type, "exp": int(exp), "jti": f"{time.monotonic_ns()}"}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


# ---------------------------------------------------------------------------- stub server


class _Stub(BaseHTTPRequestHandler):
    """Plays Label Studio (and a foreign media host); records every request."""

    server: Any

    def log_message(self, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Length": str(len(body))}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.calls.append((self.path, self.headers.get("Authorization"), body))
        if self.path == "/api/token/refresh/" and body.get("refresh") == self.server.pat:
            access = fake_jwt("access", time.time() + 300)
            self.server.issued.append(access)
            self._reply(200, json.dumps({"access": access}).encode())
        else:
            self._reply(401, b'{"detail": "token not valid"}')

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.server.calls.append((self.path, self.headers.get("Authorization"), None))
        path = urlsplit(self.path).path
        if path.startswith("/tasks/7/presign/"):
            self._reply(302, headers={"Location": self.server.foreign + "/signed.jpg?sig=s3cr3t"})
        elif path in ("/data/upload/1/ok.jpg", "/signed.jpg", "/img.jpg"):
            self._reply(200, PAYLOAD)
        elif path == "/data/upload/1/big.jpg":
            self._reply(200, b"x" * 5000)
        elif path == "/data/upload/1/stream.jpg":  # no Content-Length: body ends at close
            self.close_connection = True
            self._reply(200, b"y" * 5000, headers={"Connection": "close"})
        elif path == "/data/upload/1/slow.jpg":
            time.sleep(1.5)
            self._reply(200, PAYLOAD)
        elif path == "/data/upload/1/boom.jpg":
            self._reply(500, b"internal")
        elif path == "/data/upload/1/denied.jpg":
            self._reply(403, b"{}")
        else:
            self._reply(404, b"{}")


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out on purpose break the pipe; that is expected here."""


@pytest.fixture(scope="module")
def stub() -> Iterator[ThreadingHTTPServer]:
    """An LS stub on 127.0.0.1 whose redirects point at a foreign host (``localhost``)."""
    server = _StubServer(("127.0.0.1", 0), _Stub)
    server.calls = []  # type: ignore[attr-defined]
    server.issued = []  # type: ignore[attr-defined]
    server.pat = fake_jwt("refresh", time.time() + 10**8)  # type: ignore[attr-defined]
    port = server.server_address[1]
    server.foreign = f"http://localhost:{port}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(stub: Any, token: str = "legacy-abc", **kw: Any) -> LabelStudioClient:
    stub.calls.clear()
    return LabelStudioClient(f"http://127.0.0.1:{stub.server_address[1]}", token, **kw)


def test_relative_and_same_host_urls_get_the_token(stub: Any) -> None:
    client = _client(stub)
    assert client.download("/data/upload/1/ok.jpg") == PAYLOAD
    assert client.download(f"{client.url}/data/upload/1/ok.jpg") == PAYLOAD
    assert [auth for _, auth, _ in stub.calls] == ["Token legacy-abc"] * 2


def test_foreign_host_gets_no_token(stub: Any) -> None:
    client = _client(stub)
    assert client.download(f"{stub.foreign}/img.jpg") == PAYLOAD
    assert stub.calls == [("/img.jpg", None, None)]


def test_cloud_uri_goes_through_presign_and_redirect_drops_token(stub: Any) -> None:
    client = _client(stub)
    uri = "s3://bucket/dir/a b+c.jpg"
    assert client.download(uri, task_id=7) == PAYLOAD
    (presign, auth, _), (signed, redirected_auth, _) = stub.calls
    assert auth == "Token legacy-abc" and redirected_auth is None
    assert urlsplit(presign).path == "/tasks/7/presign/"
    fileuri = parse_qs(urlsplit(presign).query)["fileuri"][0]
    assert base64.urlsafe_b64decode(fileuri).decode() == uri
    assert signed.startswith("/signed.jpg")
    with pytest.raises(LabelStudioError, match="task id"):
        client.download("gs://bucket/x.jpg")


def test_media_url_forms() -> None:
    client = LabelStudioClient("http://ls.example:8080/label-studio/", "t")
    assert client.media_url("/data/upload/1/a.jpg") == (
        "http://ls.example:8080/label-studio/data/upload/1/a.jpg",
        True,
    )
    assert client.media_url("/label-studio/data/local-files/?d=x/y.jpg") == (
        "http://ls.example:8080/label-studio/data/local-files/?d=x/y.jpg",
        True,
    )
    assert client.media_url("https://cdn.example/a.jpg") == ("https://cdn.example/a.jpg", False)
    assert client.media_url("http://LS.example:8080/x.jpg")[1] is True
    for bad in ("file:///etc/passwd", "ftp://host/a.jpg", "relative/a.jpg"):
        with pytest.raises(LabelStudioError, match="unsupported"):
            client.media_url(bad)


def test_size_limit(stub: Any) -> None:
    client = _client(stub, max_bytes=4096)
    with pytest.raises(MediaTooLarge):
        client.download("/data/upload/1/big.jpg")  # declared Content-Length
    with pytest.raises(MediaTooLarge):
        client.download("/data/upload/1/stream.jpg")  # counted while streaming
    assert client.download("/data/upload/1/ok.jpg") == PAYLOAD  # under the limit


def test_error_mapping(stub: Any) -> None:
    client = _client(stub, timeout=0.5)
    with pytest.raises(LabelStudioUnavailable) as err:
        client.download("/data/upload/1/boom.jpg")
    assert err.value.status == 500
    with pytest.raises(LabelStudioUnavailable, match="timed out"):
        client.download("/data/upload/1/slow.jpg")
    with pytest.raises(LabelStudioAuthError) as denied:
        client.download("/data/upload/1/denied.jpg")
    assert denied.value.status == 403
    with pytest.raises(MediaNotFound):
        client.download("/data/upload/1/missing.jpg")
    closed = LabelStudioClient(f"http://127.0.0.1:{free_port()}", "t", timeout=0.5)
    with pytest.raises(LabelStudioUnavailable):
        closed.download("/data/upload/1/ok.jpg")


def test_pat_is_exchanged_cached_and_refreshed_before_expiry(stub: Any) -> None:
    client = _client(stub, token=stub.pat)
    assert client.token_kind == "refresh"
    client.download("/data/upload/1/ok.jpg")
    client.download("/data/upload/1/ok.jpg")
    refreshes = [c for c in stub.calls if c[0] == "/api/token/refresh/"]
    assert len(refreshes) == 1 and refreshes[0][1] is None  # the refresh call itself is unauthed
    assert stub.calls[1][1] == stub.calls[2][1] == f"Bearer {stub.issued[-1]}"
    client._auth._expires = time.time() + 10  # within the refresh margin
    client.download("/data/upload/1/ok.jpg")
    assert len([c for c in stub.calls if c[0] == "/api/token/refresh/"]) == 2
    assert stub.calls[-1][1] == f"Bearer {stub.issued[-1]}"
    assert all(auth != f"Bearer {stub.pat}" for _, auth, _ in stub.calls)


def test_rejected_pat_is_an_auth_error(stub: Any) -> None:
    client = _client(stub, token=fake_jwt("refresh", time.time() + 1000))
    with pytest.raises(LabelStudioAuthError):
        client.download("/data/upload/1/ok.jpg")


def test_tokens_never_logged(stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="worker.labelstudio.client")
    messages = []
    for token in ("legacy-secret-xyz", stub.pat):
        client = _client(stub, token=token)
        client.download("/data/upload/1/ok.jpg")
        client.download("s3://b/k.jpg", task_id=7)
        for path in ("boom", "denied", "missing"):
            with pytest.raises(LabelStudioError) as err:
                client.download(f"/data/upload/1/{path}.jpg")
            messages.append(str(err.value))
    text = caplog.text + "\n".join(messages)
    for secret in ("legacy-secret-xyz", stub.pat, *stub.issued, "s3cr3t"):
        assert secret not in text


# ---------------------------------------------------------------------------- real Label Studio


@pytest.fixture(scope="module")
def project(ls: LabelStudio) -> dict[str, Any]:
    """A brush project with six coco128 images; returns {"id", "tasks", "files"}."""
    images = sorted((COCO / "images").glob("*.jpg"))[:6]
    assert len(images) == 6, f"coco128 images missing under {COCO}"
    created = ls.create_project(CONFIG, title="client-test")
    ls.import_images(created["id"], images)
    tasks = ls.list_tasks(created["id"])
    return {"id": created["id"], "tasks": tasks, "files": images}


def _task_file(project: dict[str, Any], task: dict[str, Any]) -> Path:
    name = task["data"]["image"].rsplit("-", 1)[-1]
    return next(p for p in project["files"] if p.name == name)


def test_download_with_legacy_token(ls: LabelStudio, project: dict[str, Any]) -> None:
    client = LabelStudioClient(ls.url, ls.token)
    assert client.token_kind == "legacy"
    task = project["tasks"][0]
    assert client.download(task["data"]["image"]) == _task_file(project, task).read_bytes()


def test_download_with_pat(ls: LabelStudio, project: dict[str, Any]) -> None:
    client = LabelStudioClient(ls.url, ls.create_pat())
    assert client.token_kind == "refresh"
    task = project["tasks"][1]
    assert client.download(task["data"]["image"]) == _task_file(project, task).read_bytes()
    client._auth._expires = 0.0  # force a second refresh against the real /api/token/refresh/
    assert client.download(task["data"]["image"]) == _task_file(project, task).read_bytes()


def test_pat_still_works_with_legacy_tokens_disabled(
    ls: LabelStudio, project: dict[str, Any]
) -> None:
    url = project["tasks"][0]["data"]["image"]
    pat_client = LabelStudioClient(ls.url, ls.create_pat())
    ls.jwt_settings(legacy_tokens=False)
    try:
        with pytest.raises(LabelStudioAuthError) as err:
            LabelStudioClient(ls.url, ls.token).download(url)
        assert err.value.status == 401
        assert pat_client.download(url)
    finally:
        pat_client.close()
        access = ls.refresh(ls.create_pat())
        ls.session.headers["Authorization"] = f"Bearer {access}"
        ls.jwt_settings(legacy_tokens=True)
        ls.session.headers["Authorization"] = f"Token {ls.token}"


def test_bad_token_is_401(ls: LabelStudio, project: dict[str, Any]) -> None:
    client = LabelStudioClient(ls.url, "not-a-valid-token")
    with pytest.raises(LabelStudioAuthError) as err:
        client.download(project["tasks"][0]["data"]["image"])
    assert err.value.status == 401
    with pytest.raises(LabelStudioAuthError):
        client.list_tasks(project["id"])


def test_local_files_and_missing_media(ls: LabelStudio) -> None:
    """404 -> MediaNotFound, on the URL forms where LS 1.23.2 actually answers 404."""
    client = LabelStudioClient(ls.url, ls.token)
    images = sorted((COCO / "images").glob("*.jpg"))[6:8]
    local = ls.create_project(CONFIG, title="local-files")
    ls.add_local_storage(local["id"], images, "local")
    tasks = ls.list_tasks(local["id"])
    assert [t["data"]["image"] for t in tasks] == [
        f"/data/local-files/?d=local/{p.name}" for p in images
    ]
    assert client.download(tasks[0]["data"]["image"]) == images[0].read_bytes()
    (ls.local_files_root / "local" / images[1].name).unlink()
    with pytest.raises(MediaNotFound, match=r"local-files/\?d=local") as err:
        client.download(tasks[1]["data"]["image"])
    assert err.value.status == 404
    with pytest.raises(MediaNotFound):  # presign without a matching cloud storage
        client.download("s3://no-such-bucket/a.jpg", task_id=tasks[0]["id"])


def test_missing_upload_is_a_500_in_ls_1_23(ls: LabelStudio, project: dict[str, Any]) -> None:
    """LS 1.23.2 quirk: /data/upload never answers 404 (None.has_permission -> 500).

    Both an unknown name and a file deleted from disk give 500, which we must treat as
    retryable like any 5xx. If a Label Studio upgrade turns these into 404s, this test says so.
    """
    client = LabelStudioClient(ls.url, ls.token)
    task = project["tasks"][-1]
    ls.upload_file(task).unlink()
    for url in (task["data"]["image"], f"/data/upload/{project['id']}/never-uploaded.jpg"):
        with pytest.raises(LabelStudioUnavailable) as err:
            client.download(url)
        assert err.value.status == 500


def test_list_tasks_paginates(ls: LabelStudio, project: dict[str, Any]) -> None:
    client = LabelStudioClient(ls.url, ls.token)
    tasks = client.list_tasks(project["id"], page_size=4)
    assert sorted(t.id for t in tasks) == [t["id"] for t in project["tasks"]]
    assert all((t.image_url("image") or "").startswith("/data/upload/") for t in tasks)
    assert all(not t.annotated and t.cancelled_annotations == 0 for t in tasks)
    assert client.list_tasks(project["id"], page_size=1) == tasks


def test_prediction_round_trip(ls: LabelStudio, project: dict[str, Any]) -> None:
    client = LabelStudioClient(ls.url, ls.create_pat())
    task = project["tasks"][2]
    mask_path = COCO / "masks" / (_task_file(project, task).stem + ".png")
    classes = np.array(Image.open(mask_path))
    masks = {"Object": classes == np.unique(classes)[-1], "Background-thing": classes == 0}
    result = masks_to_result(
        masks, from_name="tag", to_name="image", scores={"Object": 0.9, "Background-thing": 0.4}
    )
    pred_id = client.create_prediction(task["id"], result, 0.65, "gfsam-test-v1")
    listed = client.task_predictions(task["id"])
    assert [(p.id, p.model_version) for p in listed] == [(pred_id, "gfsam-test-v1")]
    assert client.model_versions(task["project"]).get("gfsam-test-v1") == 1
    stored = client.get_prediction(pred_id)
    assert stored is not None and stored.score == pytest.approx(0.65)
    assert stored.result is not None
    height, width = classes.shape
    assert {(r["original_width"], r["original_height"]) for r in stored.result} == {(width, height)}
    decoded = annotation_masks(stored.result, from_name="tag")
    assert set(decoded) == set(masks)
    for label, mask in masks.items():
        np.testing.assert_array_equal(decoded[label], mask)
    assert client.get_prediction(10**9) is None


def test_annotation_round_trip(ls: LabelStudio, project: dict[str, Any]) -> None:
    client = LabelStudioClient(ls.url, ls.token)
    task = project["tasks"][3]
    height, width = np.array(Image.open(_task_file(project, task))).shape[:2]
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 3 : width // 2] = True
    result = masks_to_result(
        {"Object": mask}, from_name="tag", to_name="image", scores={"Object": 1}
    )
    created = ls.create_annotation(task["id"], result)
    fetched = client.get_annotation(created["id"])
    assert fetched is not None and fetched.task == task["id"] and fetched.result is not None
    np.testing.assert_array_equal(annotation_masks(fetched.result, from_name="tag")["Object"], mask)
    assert [a.id for a in client.list_annotations(task["id"])] == [created["id"]]
    labeled = {t.id: t for t in client.list_tasks(project["id"])}[task["id"]]
    assert labeled.is_labeled and labeled.total_annotations == 1
    ls.delete_annotation(created["id"])
    assert client.get_annotation(created["id"]) is None
