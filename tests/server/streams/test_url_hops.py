"""SSRF through a stream URL (issue 11, finding 3), against real loopback HTTP servers and real FFmpeg.

Two servers: the allowed one on 127.0.0.1 (the allow-list names its port), and the target on 127.0.0.2, a
loopback address spelled differently that the allow-list does not admit. Unchecked (`urls=None`, the old
behaviour), FFmpeg follows the allowed server's redirect and playlist to the target; checked, the source is
refused with a reason and the target sees no request at all.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from media import media
from streaming import RecordingSink
from visionrpc.server.config import ServerConfig
from visionrpc.server.errors import PermissionDeniedError
from visionrpc.server.streams.source_policy import SourcePolicy, redact_url, resolve_source
from visionrpc.server.streams.sources import SourceReader
from visionrpc.server.streams.types import FramePolicy, ReconnectPolicy, SourceEventKind, SourceSpec
from visionrpc.server.streams.url_policy import normalise_host


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, host: str, directory: Path, routes: dict[str, tuple[int, dict[str, str], bytes]]
    ) -> None:
        self.directory = directory
        self.routes = routes
        self.paths: list[str] = []
        super().__init__((host, 0), _Handler)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def __init__(self, request: Any, client_address: Any, server: _Server) -> None:
        super().__init__(request, client_address, server, directory=str(server.directory))

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            super().do_GET()
            return
        status, headers, body = route
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


@contextlib.contextmanager
def serving(
    host: str, directory: Path, routes: dict[str, tuple[int, dict[str, str], bytes]]
) -> Iterator[_Server]:
    server = _Server(host, directory, routes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[_Server, _Server]]:
    shutil.copyfile(media("bikes.mp4"), tmp_path / "bikes.mp4")
    with serving("127.0.0.2", tmp_path, {}) as target:
        elsewhere = f"http://127.0.0.2:{target.server_address[1]}"
        routes = {
            "/redirect-away": (302, {"Location": f"{elsewhere}/bikes.mp4"}, b""),
            "/redirect-home": (302, {"Location": "/bikes.mp4"}, b""),
            "/away.m3u8": (
                200,
                {"Content-Type": "application/vnd.apple.mpegurl"},
                f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{elsewhere}/bikes.mp4\n#EXT-X-ENDLIST\n".encode(),
            ),
            "/variants.m3u8": (
                200,
                {"Content-Type": "application/vnd.apple.mpegurl"},
                b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n/away.m3u8\n",
            ),
        }
        with serving("127.0.0.1", tmp_path, routes) as allowed:
            yield allowed, target


def policy(port: int) -> SourcePolicy:
    return SourcePolicy.from_config(ServerConfig(allowed_url_hosts=(f"127.0.0.1:{port}",)))


def read(spec: SourceSpec) -> RecordingSink:
    sink = RecordingSink(stop_after=3)
    reader = SourceReader(
        spec, sink, policy=FramePolicy.EVERY_FRAME, max_fps=None, reconnect=ReconnectPolicy(open_timeout_s=5)
    )
    reader.start()
    assert sink.wait_for(lambda s: s.frame_count() >= 3 or SourceEventKind.ERROR in s.kinds(), 30)
    reader.stop()
    return sink


HOPS = {
    # name: (path on the allowed server, checked, outcome)
    "redirect-away-unchecked": ("/redirect-away", False, "reaches the target"),  # the finding, reproduced
    "redirect-away": ("/redirect-away", True, "refused"),
    "playlist-away-unchecked": ("/away.m3u8", False, "reaches the target"),
    "playlist-away": ("/away.m3u8", True, "refused"),
    "variant-playlist-away": ("/variants.m3u8", True, "refused"),
    "redirect-home": ("/redirect-home", True, "opened at home"),
}


@pytest.mark.parametrize(("path", "checked", "outcome"), HOPS.values(), ids=HOPS.keys())
def test_every_hop_is_checked(
    servers: tuple[_Server, _Server], path: str, checked: bool, outcome: str
) -> None:
    allowed, target = servers
    port = allowed.server_address[1]
    spec = resolve_source(0, url=f"http://127.0.0.1:{port}{path}", policy=policy(port))
    if not checked:
        spec = SourceSpec(spec.index, spec.kind, spec.location)  # urls=None: what FFmpeg does on its own
    sink = read(spec)
    refusals = [e.reason for e in sink.of_kind(SourceEventKind.ERROR) if "not allowed" in e.reason]
    if outcome == "reaches the target":
        assert any(p.startswith("/bikes.mp4") for p in target.paths)
    elif outcome == "refused":
        assert refusals, sink.events
        assert target.paths == [], "the target must not be contacted"
    else:
        assert not refusals and target.paths == []
        assert allowed.paths.count("/bikes.mp4") >= 2  # the check's request, then FFmpeg's


@pytest.mark.parametrize(
    ("spelling", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.1", True),
        ("2130706433", True),
        ("0x7f.0.0.1", True),
        ("[::ffff:127.0.0.1]", True),
        ("127.0.0.2", False),
        ("localhost", False),
    ],
)
def test_hosts_are_compared_after_normalisation(spelling: str, allowed: bool) -> None:
    url = f"http://{spelling}:8080/x.mp4"
    if allowed:
        assert resolve_source(0, url=url, policy=policy(8080)).location == url
    else:
        with pytest.raises(PermissionDeniedError) as info:
            resolve_source(0, url=url, policy=policy(8080))
        assert info.value.reason == "URL_HOST_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("hosts", "url", "reason"),
    [
        (("127.0.0.1:8080",), "http://127.0.0.1:9090/x", "URL_HOST_NOT_ALLOWED"),  # the port counts
        (("*",), "http://127.1/x", "URL_HOST_NOT_PUBLIC"),
        (("*",), "http://10.1.2.3/x", "URL_HOST_NOT_PUBLIC"),
        (("*",), "http://[fe80::1]/x", "URL_HOST_NOT_PUBLIC"),
        (("*",), "http://169.254.169.254/latest/meta-data", "URL_HOST_NOT_PUBLIC"),
    ],
)
def test_wildcards_never_reach_private_addresses(hosts: tuple[str, ...], url: str, reason: str) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        resolve_source(0, url=url, policy=SourcePolicy.from_config(ServerConfig(allowed_url_hosts=hosts)))
    assert info.value.reason == reason


def test_private_addresses_through_a_wildcard_when_allowed() -> None:
    config = ServerConfig(allowed_url_hosts=("*",), allow_private_urls=True)
    assert resolve_source(0, url="http://10.1.2.3/x", policy=SourcePolicy.from_config(config)).location


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://cam/x?token=abc123&fps=5", "http://cam/x?token=***&fps=5"),
        ("https://u:pw@cam/x?sig=s3cr3t", "https://***@cam/x?sig=***"),
        ("rtsp://cam/live?Access_Token=zz;x=1", "rtsp://cam/live?Access_Token=***;x=1"),
    ],
)
def test_secrets_in_urls_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_normalise_host() -> None:
    assert [normalise_host(h) for h in ("Cam.Example.", "127.1", "[::1]", "::ffff:10.0.0.1")] == [
        "cam.example",
        "127.0.0.1",
        "::1",
        "10.0.0.1",
    ]
