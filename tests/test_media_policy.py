"""Issue 7, findings 2 and 3: the media policy (hosts, private addresses, redirects, reasons) and
the total download deadline; media errors of that kind are permanent (not retried)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import MediaServer, png_bytes
from worker.labelstudio.client import LabelStudioClient
from worker.labelstudio.errors import MediaDeadline, MediaRefused
from worker.labelstudio.media_policy import MediaPolicy
from worker.tasks import PERMANENT, TRANSIENT

LS_URL = "http://ls.invalid:8080"  # never contacted: media tests use other hosts


@pytest.fixture
def media() -> Iterator[MediaServer]:
    server = MediaServer()
    server.routes["/img.png"] = (200, {"Content-Type": "image/png"}, png_bytes(8, 8))
    yield server
    server.stop()


def client(*allow: str, private: bool = False, deadline_s: float = 60.0) -> LabelStudioClient:
    policy = MediaPolicy(LS_URL, list(allow), allow_private=private)
    return LabelStudioClient(
        LS_URL, "token", timeout=5.0, media_policy=policy, media_deadline_s=deadline_s
    )


def test_host_not_allow_listed_is_refused_before_any_request(media: MediaServer) -> None:
    with pytest.raises(MediaRefused, match="not Label Studio nor allow-listed"):
        client().download(media.url("/img.png"))
    assert media.hits == {}


def test_loopback_address_of_an_allowed_host_is_refused(media: MediaServer) -> None:
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(MediaRefused, match="private or local address"):
            client(host).download(media.url("/img.png", host))
    assert media.hits == {}


def test_private_addresses_allowed_by_setting(media: MediaServer) -> None:
    data = client("127.0.0.1", private=True).download(media.url("/img.png"))
    assert data == media.routes["/img.png"][2]


def test_redirect_to_a_refused_host_is_refused(media: MediaServer) -> None:
    other = MediaServer()
    try:
        other.routes["/secret"] = (200, {}, b"internal")
        media.routes["/r"] = (302, {"Location": other.url("/secret", "localhost")}, b"")
        with pytest.raises(MediaRefused):
            client("127.0.0.1", private=True).download(media.url("/r"))
        assert other.hits == {}
    finally:
        other.stop()


def test_failure_reason_names_the_class_not_the_answer(media: MediaServer) -> None:
    media.routes["/err"] = (418, {}, b"teapot body")
    with pytest.raises(Exception) as info:
        client("127.0.0.1", private=True).download(media.url("/err"))
    assert "418" not in str(info.value) and "teapot" not in str(info.value)


def test_total_deadline_cuts_a_dripping_server() -> None:
    drip = MediaServer(drip_s=0.2)
    try:
        drip.routes["/slow"] = (200, {}, b"x" * 1000)  # 200 s at that pace; reads never time out
        with pytest.raises(MediaDeadline):
            client("127.0.0.1", private=True, deadline_s=0.5).download(drip.url("/slow"))
    finally:
        drip.stop()


def test_policy_and_deadline_errors_are_permanent() -> None:
    for exc in (MediaRefused("x"), MediaDeadline("x")):
        assert isinstance(exc, PERMANENT) and not isinstance(exc, TRANSIENT)
