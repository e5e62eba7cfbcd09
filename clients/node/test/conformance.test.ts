// The cross-language conformance cases (tests/conformance/cases.json) against the real servers of the harness,
// through the public client API: the plain one, and for cases with "server": "recycling" the one whose
// connections are recycled every ~2 s (resume cases). Run through the harness (scripts/test-node); without
// VISIONRPC_ADDRESS this suite FAILS.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";

import {
  createClient,
  maskArea,
  maskRows,
  VisionRpcError,
  type Detection,
  type FrameResult,
  type InputFrame,
  type VisionRpcClient,
  type ImageInput,
  type ImagePrediction,
  type InferOptions,
  type StreamMessage,
  type StreamRequest,
  type StreamStatus,
} from "../src/index.js";
import { HARNESS_HINT, repositoryRoot, serverFromEnvironment, sleep } from "./support.js";

// Keypoints 0, 1, 3, 4 at the box's corners (0.01 px), each keypoint with the detection's confidence (1e-4).
function keypointsAtBoxCorners(d: Detection): boolean {
  const b = d.box;
  if (b === undefined || d.keypoints.length !== 5) {
    return false;
  }
  const corners: [number, number][] = [
    [b.xMin, b.yMin],
    [b.xMax, b.yMin],
    [b.xMin, b.yMax],
    [b.xMax, b.yMax],
  ];
  const onCorners = [0, 1, 3, 4].every((index, i) => {
    const k = d.keypoints[index];
    const corner = corners[i];
    return (
      k !== undefined && corner !== undefined && Math.abs(k.x - corner[0]) <= 0.01 && Math.abs(k.y - corner[1]) <= 0.01
    );
  });
  return onCorners && d.keypoints.every((k) => Math.abs(k.confidence - d.confidence) <= 1e-4);
}

// The mask's grid is the pixels whose centre is in the box; its top-left pixel is background, its bottom-right
// pixel object, and 40-60 % of it is object.
function maskIsLowerRightHalf(d: Detection): boolean {
  const m = d.mask;
  const b = d.box;
  if (m === undefined || b === undefined || m.width === 0 || m.height === 0) {
    return false;
  }
  const grid = (v: number): number => Math.ceil(v - 0.5);
  if (
    m.left !== grid(b.xMin) ||
    m.top !== grid(b.yMin) ||
    m.left + m.width !== grid(b.xMax) ||
    m.top + m.height !== grid(b.yMax)
  ) {
    return false;
  }
  const rows = maskRows(m);
  const fraction = maskArea(m) / (m.width * m.height);
  const topLeft = rows[0]?.[0] === true;
  const bottomRight = rows[m.height - 1]?.[m.width - 1] === true;
  return !topLeft && bottomRight && fraction >= 0.4 && fraction <= 0.6;
}

// ---------------------------------------------------------------------------------------------- case format

interface DetectionExpectation {
  class_name: string;
  min_confidence?: number;
  box?: [number, number, number, number];
  box_tolerance?: number;
  keypoints?: number;
  // The derived pose model's keypoints 0, 1, 3, 4 sit on the box's corners, each with its confidence.
  keypoints_at_box_corners?: boolean;
  // The derived segmentation model's mask: the box's half below its anti-diagonal.
  mask?: "lower_right_half";
}

interface PredictionExpectation {
  image_size?: [number, number];
  detections_include?: DetectionExpectation[];
  only_classes?: string[];
}

interface AnswerExpectation {
  sequence_number: number;
  source_index?: number;
  prediction?: PredictionExpectation;
  error?: { code: string; reason?: string; field?: string };
  outcome?: "prediction_or_dropped";
}

interface Case {
  name: string;
  rpc: "Infer" | "StreamPredictions" | "InferStream";
  /** Which of the harness's servers: the plain one when omitted. */
  server?: "recycling";
  /** A feature the case needs: "shared_memory" cases are skipped here (see skipReason). */
  requires?: "shared_memory";
  request: {
    model_id?: string;
    images?: ({ file: string } | { base64: string })[];
    options?: Record<string, unknown>;
    sources?: ({ path: string } | { url: string })[];
    stream_options?: Record<string, unknown>;
    /** InferStream: the config (proto field names), then the frames. */
    config?: {
      model_id?: string;
      options?: Record<string, unknown>;
      max_in_flight?: number;
      backpressure?: "BACKPRESSURE_WAIT" | "BACKPRESSURE_DROP";
    };
    frames?: (({ file: string } | { base64: string }) & { sequence_number: number; source_index?: number })[];
  };
  expect: {
    predictions?: PredictionExpectation[];
    answers?: AnswerExpectation[];
    frames?: number;
    first_status?: string;
    last_status?: string;
    classes_seen?: string[];
    detections_seen?: DetectionExpectation[];
    cancel_after_frames?: number;
    sequence_numbers?: "each_once_in_order";
    min_resumes?: number;
    resume_outcome?: string;
    code?: string;
    reason?: string;
    field?: string;
  };
}

const CASES_PATH = join(repositoryRoot(), "tests", "conformance", "cases.json");
const CASE_TIMEOUT_MS = 180_000;
const server = serverFromEnvironment("conformance");

// ----------------------------------------------------------------------------- case fields -> client options

/** Proto field names of InferOptions -> the client's options. An unknown field fails the case loudly. */
function inferOptions(options: Record<string, unknown> = {}): InferOptions {
  const out: InferOptions = {};
  const classes: (string | number)[] = [];
  for (const [key, value] of Object.entries(options)) {
    switch (key) {
      case "confidence_threshold":
        out.confidence = value as number;
        break;
      case "iou_threshold":
        out.iou = value as number;
        break;
      case "max_detections":
        out.maxDetections = value as number;
        break;
      case "top_k":
        out.topK = value as number;
        break;
      case "class_names":
      case "class_ids":
        classes.push(...(value as (string | number)[]));
        break;
      default:
        throw new Error(`the Node conformance runner does not know options.${key}; teach it`);
    }
  }
  if (classes.length > 0) {
    out.classes = classes;
  }
  return out;
}

function streamRequest(request: Case["request"]): StreamRequest {
  const { topK, ...options } = inferOptions(request.options);
  assert.equal(topK, undefined, "streams take no top_k");
  const out: StreamRequest = {
    ...options,
    sources: (request.sources ?? []).map((s) => ("path" in s ? s.path : s.url)),
  };
  if (request.model_id !== undefined) {
    out.model = request.model_id;
  }
  for (const [key, value] of Object.entries(request.stream_options ?? {})) {
    switch (key) {
      case "max_fps":
        out.maxFps = value as number;
        break;
      case "jpeg_quality":
        out.jpegQuality = value as number;
        break;
      case "frame_policy":
        out.framePolicy = (value as string).replace(/^FRAME_POLICY_/, "").toLowerCase() as "every_frame";
        break;
      case "frame_image":
        out.frameImage = (value as string).replace(/^FRAME_IMAGE_/, "").toLowerCase() as "raw";
        break;
      case "delivery":
        out.everyFrameDelivery = value === "DELIVERY_EVERY_FRAME";
        break;
      default:
        throw new Error(`the Node conformance runner does not know stream_options.${key}; teach it`);
    }
  }
  return out;
}

function images(request: Case["request"], media: string): ImageInput[] {
  // Files go in as paths (the client reads them), inline bytes as a Buffer.
  return (request.images ?? []).map((image) =>
    "file" in image ? join(media, image.file) : new Uint8Array(Buffer.from(image.base64, "base64")),
  );
}

/** "started" -> "STREAM_EVENT_STARTED", the proto enum name cases.json uses. */
const protoEventName = (event: string): string => `STREAM_EVENT_${event.toUpperCase()}`;

// -------------------------------------------------------------------------------------------------- checks

function detectionMatches(d: Detection, want: DetectionExpectation): boolean {
  if (d.className !== want.class_name || d.confidence < (want.min_confidence ?? 0)) {
    return false;
  }
  if (want.box !== undefined) {
    const box = d.box;
    if (box === undefined) {
      return false;
    }
    const tolerance = want.box_tolerance ?? 0;
    const got = [box.xMin, box.yMin, box.xMax, box.yMax];
    if (!got.every((v, i) => Math.abs(v - (want.box?.[i] ?? Number.NaN)) <= tolerance)) {
      return false;
    }
  }
  if (want.keypoints !== undefined && d.keypoints.length !== want.keypoints) {
    return false;
  }
  if (want.keypoints_at_box_corners === true && !keypointsAtBoxCorners(d)) {
    return false;
  }
  return want.mask === undefined || maskIsLowerRightHalf(d);
}

function checkPrediction(actual: ImagePrediction | undefined, expected: PredictionExpectation, index: number): void {
  assert.ok(actual !== undefined, `no prediction for image ${index}`);
  const where = `image ${index}`;
  if (expected.image_size !== undefined) {
    assert.deepEqual([actual.imageSize?.width, actual.imageSize?.height], expected.image_size, `${where}: image size`);
  }
  const seen = actual.detections.map((d) => `${d.className} ${d.confidence.toFixed(2)} ${JSON.stringify(d.box)}`);
  for (const want of expected.detections_include ?? []) {
    const match = actual.detections.find((d) => detectionMatches(d, want));
    assert.ok(
      match !== undefined,
      `${where}: no detection matches ${JSON.stringify(want)}; got:\n  ${seen.join("\n  ")}`,
    );
  }
  if (expected.only_classes !== undefined) {
    const others = actual.detections.filter((d) => !expected.only_classes?.includes(d.className));
    assert.deepEqual(
      others.map((d) => d.className),
      [],
      `${where}: classes outside ${expected.only_classes.join(", ")}`,
    );
  }
}

function checkError(err: unknown, expect: Case["expect"]): void {
  assert.ok(err instanceof VisionRpcError, `expected a VisionRpcError, got ${String(err)}`);
  assert.equal(err.codeName, expect.code, `status code of ${err.toString()}`);
  if (expect.reason !== undefined) {
    assert.equal(err.reason, expect.reason, `ErrorInfo.reason of ${err.toString()}`);
    assert.equal(err.domain, "visionrpc.dev", "ErrorInfo.domain");
  }
  if (expect.field !== undefined) {
    assert.equal(err.fieldViolations[0]?.field, expect.field, `first BadRequest field violation of ${err.toString()}`);
  }
}

// ---------------------------------------------------------------------------------------------------- cases

/** Why this client cannot run a case (node:test reports it), or false. */
function skipReason(c: Case): string | false {
  return c.requires === "shared_memory"
    ? "the Node client has no shared-memory inputs: Node cannot map POSIX shared memory without a native addon"
    : false;
}

if (server !== undefined) {
  const cases = JSON.parse(readFileSync(CASES_PATH, "utf8")) as Case[];
  const client = createClient(server.address, { timeoutMs: 120_000 });
  const recycling =
    server.recyclingAddress === undefined ? undefined : createClient(server.recyclingAddress, { timeoutMs: 120_000 });
  after(() => {
    client.close();
    recycling?.close();
  });

  /** The client for the case's server; a case for a server the harness did not start fails and says so. */
  const clientFor = (c: Case): VisionRpcClient => {
    if (c.server === undefined) {
      return client;
    }
    assert.equal(c.server, "recycling", `unknown server ${String(c.server)}`);
    assert.ok(recycling !== undefined, `VISIONRPC_RECYCLING_ADDRESS is not set: ${HARNESS_HINT}`);
    return recycling;
  };

  describe("conformance", () => {
    test("cases.json has cases", () => {
      assert.ok(cases.length > 0, `no cases in ${CASES_PATH}`);
    });

    for (const c of cases) {
      test(c.name, { timeout: CASE_TIMEOUT_MS, skip: skipReason(c) }, async () => {
        if (c.rpc === "Infer") {
          await runInfer(c, clientFor(c));
        } else if (c.rpc === "StreamPredictions") {
          await runStream(c, clientFor(c));
        } else if (c.rpc === "InferStream") {
          await runInferStream(c, clientFor(c));
        } else {
          assert.fail(`unknown rpc ${String(c.rpc)}`);
        }
      });
    }
  });

  async function runInfer(c: Case, client: VisionRpcClient): Promise<void> {
    const call = client.infer(images(c.request, server!.media), {
      ...inferOptions(c.request.options),
      ...(c.request.model_id === undefined ? {} : { model: c.request.model_id }),
    });
    if (c.expect.code !== undefined) {
      const err = await call.then(
        (response) => assert.fail(`expected ${c.expect.code}, got a response for model ${response.modelName}`),
        (e: unknown) => e,
      );
      checkError(err, c.expect);
      return;
    }
    const response = await call;
    const expected = c.expect.predictions ?? [];
    assert.equal(response.predictions.length, c.request.images?.length ?? 0, "one prediction per image");
    expected.forEach((want, i) => checkPrediction(response.predictions[i], want, i));
  }

  async function runInferStream(c: Case, client: VisionRpcClient): Promise<void> {
    const config = c.request.config ?? {};
    for (const key of Object.keys(config)) {
      assert.ok(["model_id", "options", "max_in_flight", "backpressure"].includes(key), `unknown config.${key}`);
    }
    const { topK, ...options } = inferOptions(config.options);
    assert.equal(topK, undefined, "InferStream takes no top_k");
    const frames: InputFrame[] = (c.request.frames ?? []).map((f) => ({
      image: "file" in f ? join(server!.media, f.file) : new Uint8Array(Buffer.from(f.base64, "base64")),
      sequenceNumber: f.sequence_number,
      sourceIndex: f.source_index ?? 0,
    }));
    const results: FrameResult[] = [];
    let error: unknown;
    try {
      for await (const result of client.inferStream(frames, {
        ...options,
        ...(config.model_id === undefined ? {} : { model: config.model_id }),
        ...(config.max_in_flight === undefined ? {} : { maxInFlight: config.max_in_flight }),
        drop: config.backpressure === "BACKPRESSURE_DROP",
      })) {
        results.push(result);
      }
    } catch (err) {
      error = err;
    }
    if (c.expect.code !== undefined) {
      checkError(error, c.expect);
      return;
    }
    if (error !== undefined) {
      throw error;
    }
    const answers = c.expect.answers ?? [];
    assert.deepEqual(
      results.map((r) => [r.sourceIndex, Number(r.sequenceNumber)]),
      answers.map((a) => [a.source_index ?? 0, a.sequence_number]),
      "one answer per frame, in order",
    );
    answers.forEach((want, i) => {
      const got = results[i] as FrameResult;
      if (want.prediction !== undefined) {
        assert.ok(got.prediction !== undefined, `answers[${i}]: expected a prediction`);
        checkPrediction(got.prediction, want.prediction, i);
      } else if (want.error !== undefined) {
        checkError(got.error, want.error);
      } else {
        assert.equal(want.outcome, "prediction_or_dropped", `answers[${i}]: unknown expectation`);
        assert.ok(got.prediction !== undefined || got.dropped, `answers[${i}]: expected a prediction or dropped`);
      }
    });
  }

  async function runStream(c: Case, client: VisionRpcClient): Promise<void> {
    const controller = new AbortController();
    const stream = client.stream(streamRequest(c.request), { signal: controller.signal });
    const cancelAfter = c.expect.cancel_after_frames;
    const events: StreamMessage[] = [];
    let frames = 0;
    let error: unknown;
    try {
      for await (const event of stream) {
        events.push(event);
        if (event.kind === "frame") {
          frames += 1;
          if (cancelAfter !== undefined && frames === cancelAfter) {
            controller.abort();
          }
        }
      }
    } catch (err) {
      error = err;
    }
    if (c.expect.code !== undefined) {
      assert.ok(
        error !== undefined,
        `expected ${c.expect.code}, the stream ended normally after ${events.length} messages`,
      );
      checkError(error, c.expect);
      return;
    }
    if (error !== undefined) {
      throw error;
    }
    // RESUMED statuses mark where this client resumed, not a state of the stream: first/last ignore them.
    const statuses = events.filter((e): e is StreamStatus => e.kind === "status" && e.event !== "resumed");
    const resumes = events.filter((e): e is StreamStatus => e.kind === "status" && e.event === "resumed");
    if (cancelAfter !== undefined) {
      // A clean CANCELLED end: no error, nothing delivered after the cancel beyond what was already in flight.
      assert.ok(stream.cancelled, "the stream reports that we cancelled it");
      assert.ok(frames >= cancelAfter, `expected at least ${cancelAfter} frames before cancelling, got ${frames}`);
      assert.ok(!statuses.some((s) => s.event === "source_ended"), "the source must not have ended: it was cancelled");
      await assertStreamFreed(client, events[0]?.streamId);
    }
    if (c.expect.frames !== undefined) {
      assert.equal(frames, c.expect.frames, "frames received");
    }
    if (c.expect.first_status !== undefined) {
      assert.equal(events[0]?.kind, "status", "the first message is a status");
      assert.equal(protoEventName(statuses[0]?.event ?? "none"), c.expect.first_status, "first status");
    }
    if (c.expect.last_status !== undefined) {
      assert.equal(protoEventName(statuses.at(-1)?.event ?? "none"), c.expect.last_status, "last status");
    }
    if (c.expect.sequence_numbers !== undefined) {
      assert.equal(c.expect.sequence_numbers, "each_once_in_order", "the only sequence_numbers expectation known");
      const seen = events.flatMap((e) => (e.kind === "frame" ? [e.sequenceNumber] : []));
      const wanted = Array.from({ length: c.expect.frames ?? seen.length }, (_, i) => i);
      assert.deepEqual(seen, wanted, "each frame exactly once, in order, across the resumes");
    }
    if (c.expect.min_resumes !== undefined) {
      assert.ok(
        resumes.length >= c.expect.min_resumes,
        `expected at least ${c.expect.min_resumes} resumes, saw ${resumes.length}`,
      );
    }
    if (c.expect.resume_outcome !== undefined) {
      for (const status of resumes) {
        const outcome = `RESUME_OUTCOME_${String(status.resume?.outcome).toUpperCase()}`;
        assert.equal(
          outcome,
          c.expect.resume_outcome,
          `resume outcome (messages lost: ${status.resume?.messagesLost})`,
        );
      }
    }
    if (c.expect.classes_seen !== undefined) {
      const seen = new Set(
        events.flatMap((e) => (e.kind === "frame" ? (e.prediction?.detections ?? []).map((d) => d.className) : [])),
      );
      for (const name of c.expect.classes_seen) {
        assert.ok(seen.has(name), `class ${name} never seen; saw ${[...seen].join(", ")}`);
      }
    }
    const detections = events.flatMap((e) => (e.kind === "frame" ? (e.prediction?.detections ?? []) : []));
    for (const want of c.expect.detections_seen ?? []) {
      assert.ok(
        detections.some((d) => detectionMatches(d, want)),
        `no detection matching ${JSON.stringify(want)} in ${detections.length} detections of the stream`,
      );
    }
  }

  /**
   * The cancel reached the server: once the pipeline's linger (2 s by default) has passed without subscribers,
   * joining the stream by id answers NOT_FOUND. A subscription the server still held would keep it running.
   */
  async function assertStreamFreed(client: VisionRpcClient, streamId: string | undefined): Promise<void> {
    assert.ok(streamId, "the stream sent its id");
    await sleep(4_000);
    const rejoin = client.stream({ streamId });
    const err = await (async () => {
      for await (const event of rejoin) {
        return new Error(`stream ${streamId} still runs after the cancel (got a ${event.kind})`);
      }
      return new Error(`joining stream ${streamId} ended without NOT_FOUND`);
    })().catch((e: unknown) => e);
    assert.ok(err instanceof VisionRpcError, String(err));
    assert.equal(err.codeName, "NOT_FOUND");
    assert.equal(err.reason, "STREAM_NOT_FOUND");
  }
}
