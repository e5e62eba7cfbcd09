"""A real RTSP server on loopback for the stream tests: one video clip looped forever at its own frame rate.

Run by Debian's /usr/bin/python3, which has PyGObject (`gi`); the project's pyenv/venv Python does not.
`tests/streaming.py` (RtspServer) starts it as a subprocess and reads the bound port from its first line:

    /usr/bin/python3 tests/rtsp_server.py --video bikes.mp4 [--port 0] [--mount /bikes]
    -> prints "PORT 38211" on stdout, then serves rtsp://127.0.0.1:38211/bikes until killed

The clip is decoded once into memory and pushed through appsrc -> x264enc -> rtph264pay, so the stream is
steady (decoding costs nothing per client) and loops without the seek glitches of a file source. Only RTSP
over TCP is offered, so the server binds nothing but its one loopback listening socket. Packages:
scripts/install-test-deps.
"""

from __future__ import annotations

import argparse
import signal
import sys

INSTALL_HINT = "GStreamer's RTSP server for /usr/bin/python3 is missing; run scripts/install-test-deps"

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
except (ImportError, ValueError) as exc:  # ValueError: typelib missing
    print(f"{INSTALL_HINT} ({exc})", file=sys.stderr, flush=True)
    sys.exit(3)


def decode_clip(path: str) -> tuple[list[bytes], str, int, int]:
    """Decodes every frame to I420 bytes; returns (frames, caps string, fps numerator, fps denominator)."""
    pipeline = Gst.parse_launch(
        "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=I420 ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("src").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    caps: Gst.Caps | None = None
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:  # end of stream
            break
        caps = sample.get_caps()
        buffer = sample.get_buffer()
        frames.append(buffer.extract_dup(0, buffer.get_size()))
    pipeline.set_state(Gst.State.NULL)
    if not frames or caps is None:
        raise SystemExit(f"no frames decoded from {path}")
    structure = caps.get_structure(0)
    ok, num, den = structure.get_fraction("framerate")
    if not ok or num <= 0:
        num, den = 25, 1
    return frames, caps.to_string(), num, den


class LoopFactory(GstRtspServer.RTSPMediaFactory):
    """One shared media for all clients; each new media restarts the clip at frame 0 with fresh timestamps."""

    def __init__(self, frames: list[bytes], caps: str, fps_num: int, fps_den: int, key_interval: int) -> None:
        super().__init__()
        self.frames = frames
        self.caps = Gst.Caps.from_string(caps)
        self.fps_num, self.fps_den = fps_num, fps_den
        # config-interval=1 (SPS/PPS once a second, and in the SDP), not -1 (before every keyframe): with -1
        # FFmpeg decodes one extra picture per keyframe, so OpenCV saw 27.5 fps from this 25 fps stream.
        self.launch = (
            "( appsrc name=src format=time ! videoconvert ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={key_interval} ! "
            "rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        self.set_shared(True)
        self.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        self.connect("media-configure", self.on_media_configure)

    def do_create_element(self, url: GstRtsp.RTSPUrl) -> Gst.Element:
        return Gst.parse_launch(self.launch)

    def on_media_configure(self, _factory: LoopFactory, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_child_by_name("src")
        appsrc.set_property("caps", self.caps)
        state = {"n": 0}
        frame_ns = Gst.util_uint64_scale_int(Gst.SECOND, self.fps_den, self.fps_num)

        def need_data(src: Gst.Element, _length: int) -> None:
            # Explicit timestamps pace the stream: the media's sinks sync to the clock, so this runs at the
            # clip's frame rate however fast the encoder is.
            n = state["n"]
            buffer = Gst.Buffer.new_wrapped(self.frames[n % len(self.frames)])
            buffer.pts = n * frame_ns
            buffer.duration = frame_ns
            state["n"] = n + 1
            src.emit("push-buffer", buffer)

        appsrc.connect("need-data", need_data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--video", required=True, help="the clip to loop")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed on stdout)")
    parser.add_argument("--mount", default="/bikes")
    parser.add_argument("--key-interval", type=int, default=10, help="frames between keyframes")
    args = parser.parse_args()

    Gst.init(None)
    frames, caps, fps_num, fps_den = decode_clip(args.video)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(
        args.mount, LoopFactory(frames, caps, fps_num, fps_den, args.key_interval)
    )
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot bind 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 2
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"PORT {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
