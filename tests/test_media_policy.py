"""Issues 7 and 22: the media policy (origins, private addresses, redirects, reasons) and the
total download deadline; media errors of that kind are permanent (not retried)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.fakes import MediaServer, png_bytes
from tests.service_fixtures import free_port
from worker.labelstudio import media_policy
from worker.labelstudio.client import LabelStudioClient
from worker.labelstudio.errors import LabelStudioError, MediaDeadline, MediaRefused
from worker.labelstudio.media_policy import GENERIC_REASON, MediaPolicy, _public
from worker.tasks import PERMANENT, TRANSIENT

LS_URL = "http://ls.invalid:8080"  # never contacted: media tests use other hosts


@pytest.fixture
def media() -> Iterator[MediaServer]:
    server = MediaServer()
    server.routes["/img.png"] = (200, {"Content-Type": "image/png"}, png_bytes(8, 8))
    yield server
    server.stop()


def client(
    *allow: str, private: bool = False, deadline_s: float = 60.0, ls_url: str = LS_URL
) -> LabelStudioClient:
    policy = MediaPolicy(ls_url, list(allow), allow_private=private)
    return LabelStudioClient(
        ls_url, "token", timeout=5.0, media_policy=policy, media_deadline_s=deadline_s
    )


def reason(fetch: LabelStudioClient, url: str) -> str:
    with pytest.raises(MediaRefused) as info:
        fetch.download(url)
    return str(info.value).replace(url, "<url>")


def test_host_not_allow_listed_is_refused_before_any_request(media: MediaServer) -> None:
    with pytest.raises(MediaRefused, match="refused or unreachable"):
        client().download(media.url("/img.png"))
    assert media.hits == {}


def test_loopback_address_of_an_allowed_host_is_refused(media: MediaServer) -> None:
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(MediaRefused, match="refused or unreachable"):
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


def test_label_studios_host_is_trusted_on_its_own_port_only(media: MediaServer) -> None:
    """Issue 22, item 2: LS's scheme, host and port; another local port is another origin."""
    other = MediaServer()
    try:
        other.routes["/img.png"] = (200, {}, b"another service")
        ls_like = client(ls_url=media.url(""))  # LS runs where `media` listens
        assert ls_like.download(media.url("/img.png")) == media.routes["/img.png"][2]
        with pytest.raises(MediaRefused, match="refused or unreachable"):
            ls_like.download(other.url("/img.png"))
        with pytest.raises(MediaRefused):
            ls_like.download(media.url("/img.png").replace("http://", "https://"))
        assert other.hits == {}
    finally:
        other.stop()


def test_every_refusal_and_network_failure_gives_the_same_reason(media: MediaServer) -> None:
    """Issue 22, item 2: a port scan through task URLs learns nothing: policy refusals, closed
    ports, timeouts, 404, 5xx and non-image answers of other origins read the same."""
    media.routes["/err"] = (418, {}, b"teapot body")
    media.routes["/boom"] = (500, {}, b"")
    open_ = client("127.0.0.1", private=True, deadline_s=1.0)
    slow = MediaServer(drip_s=0.3)
    try:
        slow.routes["/slow"] = (200, {}, b"x" * 100)
        reasons = {
            reason(client(), media.url("/img.png")),  # not allow-listed
            reason(client("127.0.0.1"), media.url("/img.png")),  # private address
            reason(open_, f"http://127.0.0.1:{free_port()}/img.png"),  # closed port
            reason(open_, media.url("/missing.png")),  # 404
            reason(open_, media.url("/err")),
            reason(open_, media.url("/boom")),
            reason(open_, slow.url("/slow")),  # over the deadline
        }
    finally:
        slow.stop()
    assert reasons == {f"media <url>: {GENERIC_REASON}"}


def test_total_deadline_cuts_a_dripping_server() -> None:
    drip = MediaServer(drip_s=0.2)
    try:
        drip.routes["/slow"] = (200, {}, b"x" * 1000)  # 200 s at that pace; reads never time out
        with pytest.raises(MediaDeadline):
            client(ls_url=drip.url(""), deadline_s=0.5).download(drip.url("/slow"))
    finally:
        drip.stop()


def test_deadline_covers_slow_headers() -> None:
    """Issue 22, item 3: headers sent a byte at a time (each within the read timeout) held a
    job 98 s against a 15 s deadline; connect, headers and body now share it."""
    drip = MediaServer(header_drip_s=0.2)  # ~8 s of headers
    try:
        drip.routes["/slow"] = (200, {}, b"x" * 10)
        for fetch, error in (
            (client(ls_url=drip.url(""), deadline_s=0.5), MediaDeadline),  # LS's origin
            (client("127.0.0.1", private=True, deadline_s=0.5), MediaRefused),  # another
        ):
            started = time.monotonic()
            with pytest.raises(error):
                fetch.download(drip.url("/slow"))
            assert time.monotonic() - started < 2.0
    finally:
        drip.stop()


def test_invalid_urls_refused_connections_and_timeouts_are_permanent(media: MediaServer) -> None:
    """Issue 22, item 3: not retried 3 times."""
    open_ = client("127.0.0.1", private=True, deadline_s=1.0)
    errors: list[Exception] = []
    for url in (
        f"http://127.0.0.1:{free_port()}/x.png",  # refused
        "http://127.0.0.1:99999/x.png",  # invalid port
        "http://[::1/x.png",  # invalid URL
    ):
        with pytest.raises((LabelStudioError, ValueError)) as info:
            open_.download(url)
        errors.append(info.value)
    with pytest.raises(LabelStudioError) as invalid:  # an invalid URL on LS's own origin
        client(ls_url=media.url("")).download(media.url("/a b\x00.png"))
    errors.append(invalid.value)
    for exc in errors:
        assert isinstance(exc, PERMANENT) and not isinstance(exc, TRANSIENT), repr(exc)


def test_dns_rebinding_is_refused_before_anything_is_sent(
    media: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22, item 8: the name checks out as public, then connects to loopback: the
    connection is refused before the request is sent (the server sees nothing)."""
    monkeypatch.setattr(media_policy, "resolve", lambda host, port: ["93.184.216.34"])
    with pytest.raises(MediaRefused):
        client("localhost").download(media.url("/img.png", "localhost"))
    assert media.hits == {}


def test_nat64_and_other_embedded_private_addresses_are_not_public() -> None:
    """Issue 22, item 8: NAT64 (and 6to4, Teredo, mapped) addresses of private IPv4s."""
    for ip in (
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b:1::808:808",
        "2002:7f00:1::1",
        "::ffff:10.0.0.1",
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    ):  # Teredo 10.0.0.1
        assert not _public(ip), ip
    assert _public("64:ff9b::808:808") and _public("8.8.8.8")


def test_policy_and_deadline_errors_are_permanent() -> None:
    for exc in (MediaRefused("x"), MediaDeadline("x")):
        assert isinstance(exc, PERMANENT) and not isinstance(exc, TRANSIENT)
