// Request building and response conversion, without a server.

import assert from "node:assert/strict";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";

import {
  buildInferRequest,
  buildStreamRequest,
  imageToProto,
  streamMessageFromProto,
  type ImageInput,
} from "../src/convert.js";
import { AnalyticsEventKind } from "../src/gen/visionrpc/v1/analytics_pb.js";
import {
  Delivery,
  FaceRedaction,
  FrameImage,
  FramePolicy,
  StreamContent,
  StreamEvent,
  StreamPredictionsResponseSchema,
} from "../src/gen/visionrpc/v1/inference_pb.js";
import { ChannelOrder } from "../src/gen/visionrpc/v1/types_pb.js";

describe("images", () => {
  test("bytes are sent encoded, as they are", async () => {
    const bytes = new Uint8Array([0x89, 0x50, 0x4e, 0x47]);
    const image = await imageToProto(bytes);
    assert.equal(image.source.case, "encoded");
    assert.deepEqual(image.source.value, bytes);
  });

  test("a path is read and sent encoded", async () => {
    const dir = await mkdtemp(join(tmpdir(), "visionrpc-node-"));
    const path = join(dir, "x.png");
    await writeFile(path, Buffer.from("not really a png"));
    const image = await imageToProto(path);
    assert.equal(image.source.case, "encoded");
    assert.equal(Buffer.from(image.source.value as Uint8Array).toString(), "not really a png");
  });

  test("a missing path rejects before any RPC", async () => {
    await assert.rejects(imageToProto("/no/such/file.png"), { code: "ENOENT" });
  });

  test("raw pixels carry size and channel order", async () => {
    const image = await imageToProto({ data: new Uint8Array(2 * 3 * 3), width: 2, height: 3, channelOrder: "rgb" });
    assert.equal(image.source.case, "raw");
    const raw = image.source.value;
    assert.ok(raw !== undefined && typeof raw === "object" && "width" in raw);
    assert.equal(raw.width, 2);
    assert.equal(raw.height, 3);
    assert.equal(raw.channelOrder, ChannelOrder.RGB);
  });

  const bad: [string, unknown, RegExp][] = [
    [
      "short raw data",
      { data: new Uint8Array(5), width: 2, height: 2, channelOrder: "gray" },
      /expected 4 bytes \(2x2x1\), got 5/,
    ],
    [
      "zero width",
      { data: new Uint8Array(0), width: 0, height: 2, channelOrder: "rgb" },
      /expected positive integer width/,
    ],
    [
      "unknown channel order",
      { data: new Uint8Array(4), width: 2, height: 2, channelOrder: "cmyk" },
      /expected channelOrder one of/,
    ],
    ["a number", 42, /expected a Uint8Array, a file path or RawPixels, got number 42/],
    ["null", null, /got null/],
  ];
  for (const [name, input, message] of bad) {
    test(`rejects ${name}`, async () => {
      await assert.rejects(imageToProto(input as ImageInput, 3), message);
    });
  }

  test("one image or many; order kept", async () => {
    const one = await buildInferRequest(new Uint8Array([1]), undefined, {});
    assert.equal(one.images.length, 1);
    assert.equal(one.modelId, "");
    const two = await buildInferRequest([new Uint8Array([1]), new Uint8Array([2])], "centerface/1", {});
    assert.deepEqual(
      two.images.map((i) => (i.source.value as Uint8Array)[0]),
      [1, 2],
    );
    assert.equal(two.modelId, "centerface/1");
  });
});

describe("options", () => {
  test("unset options stay unset (the model's defaults apply)", async () => {
    const request = await buildInferRequest([], undefined, {});
    assert.equal(request.options?.confidenceThreshold, undefined);
    assert.equal(request.options?.iouThreshold, undefined);
    assert.equal(request.options?.maxDetections, undefined);
    assert.equal(request.options?.topK, undefined);
  });

  test("classes split into names and ids", async () => {
    const request = await buildInferRequest([], undefined, { classes: ["cup", 41, "person", 0], confidence: 0 });
    assert.deepEqual(request.options?.classNames, ["cup", "person"]);
    assert.deepEqual(request.options?.classIds, [41, 0]);
    assert.equal(request.options?.confidenceThreshold, 0, "0 is a value, not unset");
  });

  test("a negative class id is refused before any RPC", async () => {
    await assert.rejects(
      buildInferRequest([], undefined, { classes: [-1] }),
      /non-negative integer ids, got number -1/,
    );
  });
});

describe("stream requests", () => {
  test("sources: paths, URLs and devices", () => {
    const request = buildStreamRequest({ sources: ["clips/bikes.mp4", "rtsp://cam/1", 0] });
    assert.deepEqual(
      request.sources.map((s) => [s.source.case, s.source.value]),
      [
        ["path", "clips/bikes.mp4"],
        ["url", "rtsp://cam/1"],
        ["device", 0],
      ],
    );
    assert.equal(request.streamOptions?.maxFps, undefined);
    assert.equal(request.streamOptions?.delivery, Delivery.LOSSY);
    assert.equal(request.streamOptions?.framePolicy, FramePolicy.UNSPECIFIED);
  });

  test("stream options", () => {
    const request = buildStreamRequest({
      sources: ["a.mp4"],
      model: "centerface",
      maxFps: 5,
      framePolicy: "newest_frame",
      everyFrameDelivery: true,
      frameImage: "annotated",
      jpegQuality: 80,
      confidence: 0.5,
      classes: ["face"],
    });
    assert.equal(request.modelId, "centerface");
    assert.equal(request.streamOptions?.maxFps, 5);
    assert.equal(request.streamOptions?.framePolicy, FramePolicy.NEWEST_FRAME);
    assert.equal(request.streamOptions?.delivery, Delivery.EVERY_FRAME);
    assert.equal(request.streamOptions?.frameImage, FrameImage.ANNOTATED);
    assert.equal(request.streamOptions?.jpegQuality, 80);
    assert.equal(request.options?.confidenceThreshold, 0.5);
    assert.deepEqual(request.options?.classNames, ["face"]);
  });

  test("analytics, face redaction, content and a declared pipeline", () => {
    const request = buildStreamRequest({
      pipeline: "gate",
      analytics: { tracking: { enabled: true }, lines: [{ name: "gate", start: { x: 1, y: 2 }, end: { x: 3, y: 4 } }] },
      faceRedaction: "pixelate",
      content: "events",
    });
    assert.equal(request.pipeline, "gate");
    assert.equal(request.content, StreamContent.EVENTS);
    assert.equal(request.streamOptions?.faceRedaction, FaceRedaction.PIXELATE);
    assert.equal(request.streamOptions?.analytics?.tracking?.enabled, true);
    assert.equal(request.streamOptions?.analytics?.lines[0]?.end?.y, 4);
  });

  test("a bad content is refused", () => {
    assert.throws(() => buildStreamRequest({ content: "all" as "events" }), /expected "frames" or "events", got all/);
  });

  test("a bad frame policy is refused", () => {
    assert.throws(
      () => buildStreamRequest({ framePolicy: "sometimes" as "every_frame" }),
      /expected "every_frame" or "newest_frame", got sometimes/,
    );
  });
});

describe("stream messages", () => {
  test("a frame: uint64 counters as numbers, capture time as a Date", () => {
    const message = create(StreamPredictionsResponseSchema, {
      streamId: "abc",
      modelName: "yolov3-tiny-coco",
      modelVersion: "1",
      payload: {
        case: "frame",
        value: {
          sourceIndex: 1,
          sequenceNumber: 42n,
          sourceTimestampMs: 1680,
          captureTime: timestampFromMs(1_700_000_000_123),
          prediction: { detections: [{ className: "car", confidence: 0.9 }] },
          drops: { framesSkipped: 3n, resultsDropped: 1n },
        },
      },
    });
    const event = streamMessageFromProto(message);
    assert.ok(event?.kind === "frame");
    assert.equal(event.streamId, "abc");
    assert.equal(event.sequenceNumber, 42);
    assert.equal(event.sourceIndex, 1);
    assert.equal(event.captureTime?.getTime(), 1_700_000_000_123);
    assert.equal(event.framesSkipped, 3);
    assert.equal(event.resultsDropped, 1);
    assert.equal(event.prediction?.detections[0]?.className, "car");
  });

  test("a status: event names, source properties", () => {
    const message = create(StreamPredictionsResponseSchema, {
      streamId: "abc",
      payload: {
        case: "status",
        value: {
          event: StreamEvent.STARTED,
          sources: [{ sourceIndex: 0, width: 640, height: 272, fps: 25, frameCount: 250n }],
        },
      },
    });
    const event = streamMessageFromProto(message);
    assert.ok(event?.kind === "status");
    assert.equal(event.event, "started");
    assert.deepEqual(event.sources, [{ sourceIndex: 0, width: 640, height: 272, fps: 25, frameCount: 250 }]);
  });

  test("events: a frame's analytics events", () => {
    const message = create(StreamPredictionsResponseSchema, {
      streamId: "abc",
      cursor: 7n,
      payload: {
        case: "events",
        value: { events: [{ kind: AnalyticsEventKind.LINE_CROSSED, name: "gate", trackId: 3n }] },
      },
    });
    const event = streamMessageFromProto(message);
    assert.ok(event?.kind === "events");
    assert.equal(event.cursor, 7);
    assert.equal(event.events[0]?.name, "gate");
    assert.equal(event.events[0]?.trackId, 3n);
  });

  test("an empty payload (from a newer server) is skipped", () => {
    assert.equal(streamMessageFromProto(create(StreamPredictionsResponseSchema, {})), undefined);
  });
});
