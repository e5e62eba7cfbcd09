"""Starts the real visionrpc servers for a client's conformance suite, runs the suite, stops the servers.

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ for media.py, model_exports.py
from media import media
from model_exports import install_conformance_models

PHOTOS = ("coffee.png", "motorcycle_left.png", "astronaut.png")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_serving(address: str, server: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """True once the server answers SERVING; False at the timeout, or at once if its process exited."""
    deadline = time.monotonic() + timeout_s
    request = health_pb2.HealthCheckRequest(service="visionrpc.v1.InferenceService")
    while time.monotonic() < deadline and server.poll() is None:
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
        # The plain server also serves the derived pose and segmentation models the cases name.
        install_conformance_models(root / "plain-models")
        servers: list[subprocess.Popen[bytes]] = []
        try:
            # The first server is the plain one; the second recycles its connections every ~2 s, so a stream
            # on it is cut several times and the client's resume is what keeps it whole.
            # One after the other: the first installs the built-in model into the shared cache.
            addresses: dict[str, str] = {}
            for name, flags in (
                # Shared memory on: the shared-memory cases need it (clients on this host, as this user).
                ("plain", ("--shared-memory",)),
                # A long linger, so a slow reconnection on a loaded machine still finds the stream running.
                (
                    "recycling",
                    (
                        "--max-connection-age-s",
                        "2",
                        "--max-connection-age-grace-s",
                        "1",
                        "--pipeline-linger-s",
                        "10",
                    ),
                ),
            ):
                addresses[name] = start_server(root, name, servers, *flags)
                if not wait_serving(addresses[name], servers[-1], timeout_s=300):
                    log = (root / f"{name}-server.log").read_text()
                    sys.stderr.write(f"the {name} server did not become SERVING:\n{log}")
                    return 1
            env = dict(
                os.environ,
                VISIONRPC_ADDRESS=addresses["plain"],
                VISIONRPC_RECYCLING_ADDRESS=addresses["recycling"],
                VISIONRPC_CONFORMANCE_MEDIA=str(root / "photos"),
            )
            return subprocess.call(args.command, cwd=args.cwd, env=env)
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(timeout=30)


def start_server(root: Path, name: str, servers: list[subprocess.Popen[bytes]], *flags: str) -> str:
    """Starts a server on a free port, serving root/media with a model repository of its own; its address."""
    port = free_port()
    command = [
        sys.executable, "-m", "visionrpc.server.cli", "serve", "--port", str(port),
        "--media-root", str(root / "media"), "--model-repository", str(root / f"{name}-models"),
        *flags,
    ]  # fmt: skip
    with open(root / f"{name}-server.log", "w") as log:
        servers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    return f"127.0.0.1:{port}"


if __name__ == "__main__":
    sys.exit(main())
