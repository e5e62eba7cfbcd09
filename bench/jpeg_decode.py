"""JPEG decode time at full size against reduced size (libjpeg-turbo's DCT scaling), for yolov3-tiny's input.

    python -m bench.jpeg_decode [--repeats 30]

For the benchmark's photos upscaled x2, x4 and x6 and encoded as JPEG (quality 90), prints the median of
`decode_image` alone and of decode + `preprocess` (what a request pays before inference), full size against
`min_size` = the letterbox's resize target, the two alternating call by call. The numbers in
docs/performance.md come from this script.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
from visionrpc.server.domain import ImageSize
from visionrpc.server.imaging import DecodedImage, decode_image
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.models.builtins import install_builtin
from visionrpc.server.processing import preprocess

from .assets import IMAGES, load_image, model_cache_dir

__all__ = ["main"]

LIMIT = 100_000_000


def _time_into(function: Callable[[], object], samples: list[float]) -> None:
    started = time.perf_counter()
    function()
    samples.append((time.perf_counter() - started) * 1000.0)


def main() -> None:
    parser = argparse.ArgumentParser(description="JPEG decode time, full size against reduced size.")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    downloads = model_cache_dir()
    manifest = ModelManifest.read(
        install_builtin("yolov3-tiny-coco", downloads / "builtin-models", downloads)
    )
    print(f"{args.repeats} calls each, median ms; model input {manifest.input_width}x{manifest.input_height}")
    columns = ("scale", "decode full", "reduced", "+preprocess full", "reduced")
    print(f"{'image':32s} " + " ".join(f"{c:>{w}s}" for c, w in zip(columns, (6, 12, 8, 17, 8), strict=True)))
    for name in IMAGES:
        photo = load_image(name)
        for upscale in (2, 4, 6):
            large = cv2.resize(photo, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
            data = cv2.imencode(".jpg", large, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            full = decode_image(data, max_pixels=LIMIT)
            _, transform = preprocess(full.pixels, full.order, manifest)
            needed = ImageSize(
                round(full.size.width * transform.scale_x), round(full.size.height * transform.scale_y)
            )

            def decode(reduced: bool, data: bytes = data, needed: ImageSize = needed) -> DecodedImage:
                return decode_image(data, max_pixels=LIMIT, min_size=needed if reduced else None)

            def both(reduced: bool) -> None:
                image = decode(reduced)
                preprocess(image.pixels, image.order, manifest)

            samples: dict[str, list[float]] = {
                key: [] for key in ("full", "reduced", "full+pre", "reduced+pre")
            }
            for _ in range(args.repeats):
                _time_into(lambda: decode(False), samples["full"])
                _time_into(lambda: decode(True), samples["reduced"])
                _time_into(lambda: both(False), samples["full+pre"])
                _time_into(lambda: both(True), samples["reduced+pre"])
            medians = {key: statistics.median(values) for key, values in samples.items()}
            label = f"{name} x{upscale} {full.size.width}x{full.size.height}"
            print(
                f"{label:32s} {decode(True).scale:6.3f} {medians['full']:12.1f} {medians['reduced']:8.1f} "
                f"{medians['full+pre']:17.1f} {medians['reduced+pre']:8.1f}"
            )


if __name__ == "__main__":
    main()
