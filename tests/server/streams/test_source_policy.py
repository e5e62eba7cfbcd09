"""The source policy, the security boundary of streams: what a request may name, refused or resolved.

Paths are tried against a real media root holding symlinks that stay inside it and symlinks that lead out.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from media import media
from visionrpc.server.config import ServerConfig
from visionrpc.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    VisionRpcError,
)
from visionrpc.server.streams.source_policy import SourcePolicy, redact_url, resolve_source
from visionrpc.server.streams.types import SourceKind, SourceSpec


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    """root/bikes.mp4, clips/inner.mp4 -> ../bikes.mp4 (allowed), escape.mp4 -> outside (refused), ..."""
    root = tmp_path / "media"
    (root / "clips").mkdir(parents=True)
    (root / "bikes.mp4").write_bytes(
        media("bikes.mp4").read_bytes()
    )  # a copy: a link to the cache would lead outside
    (root / "clips" / "inner.mp4").symlink_to("../bikes.mp4")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"not yours")
    (root / "escape.mp4").symlink_to(outside)
    (root / "escape-missing.mp4").symlink_to(tmp_path / "nothing-here.mp4")
    (root / "outside-dir").symlink_to(tmp_path)
    (root / "notes.mp4").write_text("this is not a video\n" * 100)
    (root / "loop-a").symlink_to("loop-b")
    (root / "loop-b").symlink_to("loop-a")
    (root / "clips" / "up").symlink_to("../..")  # a relative link that climbs out
    return root


def policy_for(
    root: Path, *, hosts: tuple[str, ...] = ("cam.example",), devices: bool = False
) -> SourcePolicy:
    config = ServerConfig(media_root=root, allowed_url_hosts=hosts, enable_devices=devices)
    return SourcePolicy.from_config(config)


INVALID = (InvalidArgumentError, "INVALID_ARGUMENT")
INVALID_PATH = (InvalidArgumentError, "INVALID_PATH")
TOO_LONG = (InvalidArgumentError, "PATH_TOO_LONG")
OUTSIDE = (PermissionDeniedError, "SOURCE_OUTSIDE_MEDIA_ROOT")
SCHEME = (PermissionDeniedError, "URL_SCHEME_NOT_ALLOWED")
HOST = (PermissionDeniedError, "URL_HOST_NOT_ALLOWED")
Refusal = tuple[dict[str, object], tuple[type[VisionRpcError], str], str]

REFUSALS: dict[str, Refusal] = {
    # name: (source, (error, reason), violated field below sources[2]); the policy allows host cam.example
    "absolute-path": ({"path": "/etc/passwd"}, INVALID_PATH, ".path"),
    "windows-absolute": ({"path": "C:\\video.mp4"}, INVALID_PATH, ".path"),
    "dot-dot": ({"path": "../bikes.mp4"}, INVALID_PATH, ".path"),
    "inner-dot-dot": ({"path": "clips/../../x.mp4"}, INVALID_PATH, ".path"),
    "empty-path": ({"path": ""}, INVALID_PATH, ".path"),
    "nul": ({"path": "bikes.mp4\x00.txt"}, INVALID_PATH, ".path"),
    "directory": ({"path": "clips"}, (InvalidArgumentError, "NOT_A_FILE"), ".path"),
    # Issue 11: names over NAME_MAX and paths over PATH_MAX were INTERNAL with a traceback.
    "component-over-name-max": ({"path": "a" * 300 + ".mp4"}, TOO_LONG, ".path"),
    "path-over-path-max": ({"path": "a/" * 2100 + "x.mp4"}, TOO_LONG, ".path"),
    "too-many-components": ({"path": "a/" * 70 + "x.mp4"}, TOO_LONG, ".path"),
    "multibyte-component-over-name-max": ({"path": "\u00e9" * 200}, TOO_LONG, ".path"),
    "symlink-loop": ({"path": "loop-a/x.mp4"}, (InvalidArgumentError, "SYMLINK_LOOP"), ".path"),
    "link-to-dotdot-escape": ({"path": "clips/up/secret.mp4"}, OUTSIDE, ".path"),
    "file-as-directory": ({"path": "bikes.mp4/x.mp4"}, (NotFoundError, "SOURCE_NOT_FOUND"), ".path"),
    "symlink-escape": ({"path": "escape.mp4"}, OUTSIDE, ".path"),
    "symlink-escape-missing-target": ({"path": "escape-missing.mp4"}, OUTSIDE, ".path"),
    "symlinked-directory-escape": ({"path": "outside-dir/secret.mp4"}, OUTSIDE, ".path"),
    "missing-file": ({"path": "nope.mp4"}, (NotFoundError, "SOURCE_NOT_FOUND"), ".path"),
    "scheme-not-allowed": ({"url": "ftp://cam.example/x.mp4"}, SCHEME, ".url"),
    "file-url": ({"url": "file:///etc/passwd"}, SCHEME, ".url"),
    "host-not-allowed": ({"url": "rtsp://evil.example/live"}, HOST, ".url"),
    "suffix-is-not-a-host": ({"url": "rtsp://notcam.example/live"}, HOST, ".url"),
    "malformed-ipv6": ({"url": "rtsp://[::1/live"}, INVALID, ".url"),
    "bad-port": ({"url": "rtsp://cam.example:99999/x"}, INVALID, ".url"),
    "no-scheme": ({"url": "cam.example/live"}, INVALID, ".url"),
    "no-host": ({"url": "rtsp:///live"}, INVALID, ".url"),
    "space": ({"url": "rtsp://cam.example/a b"}, INVALID, ".url"),
    "devices-disabled": ({"device": 0}, (PermissionDeniedError, "DEVICES_DISABLED"), ".device"),
    "negative-device": ({"device": -1}, INVALID, ".device"),
    "nothing": ({}, INVALID, ""),
    "two-at-once": ({"path": "bikes.mp4", "device": 0}, INVALID, ""),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_resolve_source_refuses(case: Refusal, jail: Path) -> None:
    source, (error, reason), field = case
    with pytest.raises(error) as info:
        resolve_source(2, **source, policy=policy_for(jail))  # type: ignore[arg-type]
    assert type(info.value) is error
    assert info.value.reason == reason
    assert [v.field for v in info.value.violations] == [f"sources[2]{field}"]


@pytest.mark.parametrize(
    "path", ["a" * 640_000, "a/" * 320_000 + "x.mp4", "./" * 320_000 + "bikes.mp4", "\u00e9" * 300_000]
)
def test_huge_paths_are_refused_in_linear_time_and_never_echoed(path: str, jail: Path) -> None:
    # A 640 KB path took 13 s of server CPU (quadratic realpath) and slowed every other call 5-10x.
    started = time.perf_counter()
    with pytest.raises(InvalidArgumentError) as info:
        resolve_source(0, path=path, policy=policy_for(jail))
    assert time.perf_counter() - started < 0.05
    assert info.value.reason == "PATH_TOO_LONG"
    assert len(info.value.message) < 200 and all(len(v.description) < 200 for v in info.value.violations)


def test_a_deep_path_inside_the_root_resolves(jail: Path) -> None:
    deep = jail.joinpath(*["d"] * 60)
    deep.mkdir(parents=True)
    (deep / "clip.mp4").symlink_to("/".join([".."] * 60) + "/bikes.mp4")
    spec = resolve_source(0, path="/".join(["d"] * 60) + "/clip.mp4", policy=policy_for(jail))
    assert spec.location == str(jail.resolve() / "bikes.mp4")


@pytest.mark.parametrize(
    "url", ["rtsp://admin:hunter2@cam.example:99x/live", "rtsp://admin:hun/ter2@cam.example/x"]
)
def test_malformed_url_refusals_never_show_the_credentials(url: str, jail: Path) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        resolve_source(0, url=url, policy=policy_for(jail))
    assert "hunter2" not in str(info.value) and "ter2" not in str(info.value.violations)


def test_host_refusal_names_the_host_and_never_the_credentials(jail: Path) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        resolve_source(0, url="rtsp://admin:hunter2@Evil.Example:554/live", policy=policy_for(jail))
    assert info.value.metadata == {"host": "evil.example", "port": "554"}
    shown = f"{info.value} {info.value.metadata} {info.value.violations}"
    assert "hunter2" not in shown and "admin" not in shown


ROOT = "<root>"  # the real media root
Acceptance = tuple[dict[str, object], tuple[str, ...], SourceKind, str]

ACCEPTED: dict[str, Acceptance] = {
    # name: (source, allowed hosts, kind, location)
    "file": ({"path": "bikes.mp4"}, (), SourceKind.FILE, f"{ROOT}/bikes.mp4"),
    "link-inside-root": ({"path": "clips/inner.mp4"}, (), SourceKind.FILE, f"{ROOT}/bikes.mp4"),
    "dot-segments": ({"path": "./clips/./inner.mp4"}, (), SourceKind.FILE, f"{ROOT}/bikes.mp4"),
    "allowed-host": ({"url": "rtsp://cam.example/a"}, ("cam.example",), SourceKind.URL, "rtsp://cam.example/a"),
    "host-case": ({"url": "RTSP://CAM.example/a"}, ("cam.example",), SourceKind.URL, "RTSP://CAM.example/a"),
    "any-host": ({"url": "http://93.184.216.34:8080/v.mp4"}, ("*",), SourceKind.URL, "http://93.184.216.34:8080/v.mp4"),
    "suffix": ({"url": "rtsps://a.cams.example/x"}, ("*.cams.example",), SourceKind.URL, "rtsps://a.cams.example/x"),
    "credentials-kept": ({"url": "rtsp://u:p@cam.example/x"}, ("cam.example",), SourceKind.URL, "rtsp://u:p@cam.example/x"),
}  # fmt: skip


@pytest.mark.parametrize("case", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_resolve_source_accepts(case: Acceptance, jail: Path) -> None:
    source, hosts, kind, location = case
    spec = resolve_source(1, **source, policy=policy_for(jail, hosts=hosts))  # type: ignore[arg-type]
    assert spec == SourceSpec(index=1, kind=kind, location=location.replace(ROOT, str(jail.resolve())))


def test_devices_resolve_when_enabled(jail: Path) -> None:
    spec = resolve_source(0, device=1, policy=policy_for(jail, devices=True))
    assert spec == SourceSpec(index=0, kind=SourceKind.DEVICE, location="1")
    assert spec.live


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://user:pw@cam/x", "rtsp://***@cam/x"),
        ("rtsp://user@cam:554", "rtsp://***@cam:554"),
        ("http://cam/a@b", "http://cam/a@b"),  # an @ in the path is not user info
        ("rtsp://u:pa/ss@cam/x", "rtsp://***@cam/x"),  # an unescaped / in the password
        ("rtsp://u:p@ss@cam/x?a=b@c", "rtsp://***@cam/x?a=b@c"),
        ("rtsp://cam/x", "rtsp://cam/x"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
