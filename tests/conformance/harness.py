"""Starts one real visionrpc server for a client's conformance suite, runs the suite, stops the server.

    python tests/conformance/harness.py --cwd clients/go -- go test ./...
    python tests/conformance/harness.py --cwd clients/node -- npm test

The suite finds the server in $VISIONRPC_ADDRESS and the photos in $VISIONRPC_CONFORMANCE_MEDIA
(see README.md).
The harness exits with the suite's exit code, or 1 if the server did not come up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ for media.py
from media import media

PHOTOS = ("coffee.png", "motorcycle_left.png", "astronaut.png")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_serving(address: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    request = health_pb2.HealthCheckRequest(service="visionrpc.v1.InferenceService")
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(address) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cwd", type=Path, default=Path.cwd(), help="directory to run the suite in")
    parser.add_argument("command", nargs="+", help="the suite's command, after --")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="visionrpc-conformance-") as tmp:
        root = Path(tmp)
        (root / "media").mkdir()
        (root / "photos").mkdir()
        shutil.copyfile(media("bikes.mp4"), root / "media" / "bikes.mp4")
        for photo in PHOTOS:
            shutil.copyfile(media(photo), root / "photos" / photo)
        port = free_port()
        address = f"127.0.0.1:{port}"
        server_command = [
            sys.executable, "-m", "visionrpc.server.cli", "serve", "--port", str(port),
            "--media-root", str(root / "media"), "--model-repository", str(root / "models"),
        ]  # fmt: skip
        with open(root / "server.log", "w") as log:
            server = subprocess.Popen(server_command, stdout=log, stderr=subprocess.STDOUT)
            try:
                if not wait_serving(address, timeout_s=300):
                    sys.stderr.write(
                        "the server did not become SERVING:\n" + (root / "server.log").read_text()
                    )
                    return 1
                env = dict(
                    os.environ, VISIONRPC_ADDRESS=address, VISIONRPC_CONFORMANCE_MEDIA=str(root / "photos")
                )
                return subprocess.call(args.command, cwd=args.cwd, env=env)
            finally:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
