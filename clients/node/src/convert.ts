/**
 * The protobuf edge of the client: user inputs -> request messages, stream responses -> plain events.
 * Nothing else in the package builds generated messages by hand.
 */

import { readFile } from "node:fs/promises";

import { clone, create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";

import { StreamAnalyticsSchema, type AnalyticsEvent, type FrameAnalytics } from "./gen/visionrpc/v1/analytics_pb.js";
import {
  Delivery,
  FaceRedaction,
  FrameImage,
  FramePolicy,
  InferRequestSchema,
  ResumeOutcome,
  StreamContent,
  StreamEvent,
  StreamPredictionsRequestSchema,
  StreamResumeSchema,
  type InferRequest,
  type StreamPredictionsRequest,
  type StreamPredictionsResponse,
  type VideoSourceSchema,
} from "./gen/visionrpc/v1/inference_pb.js";
import {
  ChannelOrder,
  ImageSchema,
  InferOptionsSchema,
  type Image,
  type ImagePrediction,
  type InferOptions as InferOptionsMessage,
} from "./gen/visionrpc/v1/types_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ResumePoint } from "./resume.js";

// ------------------------------------------------------------------------------------------------ inputs

/** Channel order of raw 8-bit pixels. */
export type ChannelOrderName = "rgb" | "bgr" | "gray" | "rgba" | "bgra";

/** Decoded 8-bit pixels, rows top to bottom, channels interleaved, no row padding (e.g. from sharp's `.raw()`). */
export interface RawPixels {
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly channelOrder: ChannelOrderName;
}

/**
 * One image: encoded file bytes (JPEG, PNG, BMP, WebP, GIF; a Buffer is a Uint8Array), a path to such a file
 * (read here, sent encoded, decoded by the server), or raw pixels (no decoding on either side).
 */
export type ImageInput = Uint8Array | string | RawPixels;

/** Post-processing options; unset ones take the model's defaults. */
export interface InferOptions {
  /** Minimum detection confidence in [0, 1]. */
  confidence?: number;
  /** NMS IoU threshold in [0, 1]. */
  iou?: number;
  /** At most this many detections per image. */
  maxDetections?: number;
  /** Keep only these classes, by name ("cup") or id (41), mixed freely. */
  classes?: readonly (string | number)[];
  /** Classifiers: how many top classes to return. */
  topK?: number;
}

/** What `stream()` subscribes to. */
export interface StreamRequest extends Omit<InferOptions, "topK"> {
  /**
   * Paths below the server's media root ("clips/bikes.mp4"), URLs ("rtsp://…", "http://…"), or device indexes
   * (numbers); results carry the source's index in this list.
   */
  sources?: readonly (string | number)[];
  /** "name" or "name/version"; the server's default model when omitted. */
  model?: string;
  /** Join a running stream by id instead (every message carries it); the other fields are then ignored. */
  streamId?: string;
  /** Cap on processed frames per second per source. */
  maxFps?: number;
  /** The server chooses when omitted: files every frame, live sources the newest frame. */
  framePolicy?: "every_frame" | "newest_frame";
  /** Receive every result, making the pipeline wait for you (one subscriber, file sources only). */
  everyFrameDelivery?: boolean;
  /** Receive each frame as JPEG, as decoded or with the predictions drawn on it. */
  frameImage?: "raw" | "annotated";
  /** JPEG quality 1-100 for frame images; the server's default when omitted. */
  jpegQuality?: number;
  /** Watch a pipeline declared in the server's pipelines file by name; the other fields are then ignored. */
  pipeline?: string;
  /**
   * Tracking, zones and lines (the contract's StreamAnalytics, e.g.
   * `{ lines: [{ name: "gate", start: { x: 320, y: 0 }, end: { x: 320, y: 272 } }] }`): frames then carry
   * `analytics` and detections a `trackId`.
   */
  analytics?: MessageInitShape<typeof StreamAnalyticsSchema>;
  /** Hide faces in the frame images returned. */
  faceRedaction?: "blur" | "pixelate";
  /** "events": receive only analytics events (kind "events") and statuses, not every frame. */
  content?: "frames" | "events";
}

const FACE_REDACTIONS: Readonly<Record<string, FaceRedaction>> = {
  blur: FaceRedaction.BLUR,
  pixelate: FaceRedaction.PIXELATE,
};
const CONTENTS: Readonly<Record<string, StreamContent>> = {
  frames: StreamContent.FRAMES,
  events: StreamContent.EVENTS,
};

const CHANNEL_ORDERS: Readonly<Record<ChannelOrderName, readonly [ChannelOrder, number]>> = {
  rgb: [ChannelOrder.RGB, 3],
  bgr: [ChannelOrder.BGR, 3],
  gray: [ChannelOrder.GRAY, 1],
  rgba: [ChannelOrder.RGBA, 4],
  bgra: [ChannelOrder.BGRA, 4],
};

/** Builds one request image; paths are read here. Throws TypeError / RangeError before any RPC. */
export async function imageToProto(image: ImageInput, index = 0): Promise<Image> {
  if (typeof image === "string") {
    return create(ImageSchema, { source: { case: "encoded", value: await readFile(image) } });
  }
  if (image instanceof Uint8Array) {
    return create(ImageSchema, { source: { case: "encoded", value: image } });
  }
  if (typeof image === "object" && image !== null && image.data instanceof Uint8Array) {
    const entry = CHANNEL_ORDERS[image.channelOrder];
    if (entry === undefined) {
      throw new TypeError(
        `images[${index}]: expected channelOrder one of ${Object.keys(CHANNEL_ORDERS).join(", ")}, ` +
          `got ${String(image.channelOrder)}`,
      );
    }
    const [channelOrder, channels] = entry;
    const expected = image.width * image.height * channels;
    if (!Number.isInteger(image.width) || !Number.isInteger(image.height) || image.width < 1 || image.height < 1) {
      throw new RangeError(
        `images[${index}]: expected positive integer width and height, got ${image.width}x${image.height}`,
      );
    }
    if (image.data.length !== expected) {
      throw new RangeError(
        `images[${index}]: expected ${expected} bytes (${image.width}x${image.height}x${channels}), got ${image.data.length}`,
      );
    }
    return create(ImageSchema, {
      source: {
        case: "raw",
        value: { data: image.data, width: image.width, height: image.height, channelOrder },
      },
    });
  }
  throw new TypeError(`images[${index}]: expected a Uint8Array, a file path or RawPixels, got ${describe(image)}`);
}

/** One image or an array of images -> an array (a Uint8Array is one image, not many). */
export function imageList(images: ImageInput | readonly ImageInput[]): readonly ImageInput[] {
  return Array.isArray(images) ? images : [images as ImageInput];
}

export function optionsToProto(options: InferOptions): InferOptionsMessage {
  const classes = options.classes ?? [];
  for (const cls of classes) {
    if (typeof cls !== "string" && !(Number.isInteger(cls) && cls >= 0)) {
      throw new TypeError(`classes: expected class names or non-negative integer ids, got ${describe(cls)}`);
    }
  }
  return create(InferOptionsSchema, {
    confidenceThreshold: options.confidence,
    iouThreshold: options.iou,
    maxDetections: options.maxDetections,
    topK: options.topK,
    classNames: classes.filter((c): c is string => typeof c === "string"),
    classIds: classes.filter((c): c is number => typeof c === "number"),
  });
}

export async function buildInferRequest(
  images: ImageInput | readonly ImageInput[],
  model: string | undefined,
  options: InferOptions,
): Promise<InferRequest> {
  const protos = await Promise.all(imageList(images).map((image, i) => imageToProto(image, i)));
  return create(InferRequestSchema, { modelId: model ?? "", images: protos, options: optionsToProto(options) });
}

const FRAME_POLICIES = { every_frame: FramePolicy.EVERY_FRAME, newest_frame: FramePolicy.NEWEST_FRAME } as const;
const FRAME_IMAGES = { raw: FrameImage.RAW, annotated: FrameImage.ANNOTATED } as const;

function sourceToProto(source: string | number, index: number): MessageInitShape<typeof VideoSourceSchema> {
  if (typeof source === "number") {
    if (!Number.isInteger(source) || source < 0) {
      throw new TypeError(`sources[${index}]: expected a device index >= 0, got ${source}`);
    }
    return { source: { case: "device", value: source } };
  }
  if (typeof source !== "string") {
    throw new TypeError(`sources[${index}]: expected a path, a URL or a device index, got ${describe(source)}`);
  }
  return { source: source.includes("://") ? { case: "url", value: source } : { case: "path", value: source } };
}

export function buildStreamRequest(request: StreamRequest): StreamPredictionsRequest {
  const framePolicy = request.framePolicy === undefined ? FramePolicy.UNSPECIFIED : FRAME_POLICIES[request.framePolicy];
  const frameImage = request.frameImage === undefined ? FrameImage.UNSPECIFIED : FRAME_IMAGES[request.frameImage];
  if (framePolicy === undefined) {
    throw new TypeError(`framePolicy: expected "every_frame" or "newest_frame", got ${String(request.framePolicy)}`);
  }
  if (frameImage === undefined) {
    throw new TypeError(`frameImage: expected "raw" or "annotated", got ${String(request.frameImage)}`);
  }
  const faceRedaction =
    request.faceRedaction === undefined ? FaceRedaction.UNSPECIFIED : FACE_REDACTIONS[request.faceRedaction];
  if (faceRedaction === undefined) {
    throw new TypeError(`faceRedaction: expected "blur" or "pixelate", got ${String(request.faceRedaction)}`);
  }
  const content = request.content === undefined ? StreamContent.UNSPECIFIED : CONTENTS[request.content];
  if (content === undefined) {
    throw new TypeError(`content: expected "frames" or "events", got ${String(request.content)}`);
  }
  return create(StreamPredictionsRequestSchema, {
    streamId: request.streamId ?? "",
    modelId: request.model ?? "",
    sources: (request.sources ?? []).map(sourceToProto),
    options: optionsToProto(request),
    streamOptions: {
      maxFps: request.maxFps,
      framePolicy,
      delivery: request.everyFrameDelivery === true ? Delivery.EVERY_FRAME : Delivery.LOSSY,
      frameImage,
      jpegQuality: request.jpegQuality ?? 0,
      faceRedaction,
      analytics: request.analytics === undefined ? undefined : create(StreamAnalyticsSchema, request.analytics),
    },
    pipeline: request.pipeline ?? "",
    content,
  });
}

/** The original request with `resume` set: its other fields still describe the stream, for a RESTARTED resume. */
export function resumeRequest(request: StreamPredictionsRequest, point: ResumePoint): StreamPredictionsRequest {
  const resumed = clone(StreamPredictionsRequestSchema, request);
  resumed.resume = create(StreamResumeSchema, {
    streamId: point.streamId,
    afterCursor: point.afterCursor,
    nextSequenceNumbers: [...point.nextSequenceNumbers],
  });
  return resumed;
}

// ----------------------------------------------------------------------------------------------- outputs

export type StreamEventName = "started" | "reconnecting" | "reconnected" | "source_ended" | "error" | "resumed";

/** How a resumed subscription continued; "unspecified" for an outcome this client does not know. */
export type ResumeOutcomeName = "replayed" | "partial" | "restarted" | "unspecified";

const OUTCOME_NAMES: Readonly<Partial<Record<ResumeOutcome, ResumeOutcomeName>>> = {
  [ResumeOutcome.REPLAYED]: "replayed",
  [ResumeOutcome.PARTIAL]: "partial",
  [ResumeOutcome.RESTARTED]: "restarted",
};

/** What a RESUMED status reports: whether anything was lost while the subscription was broken. */
export interface ResumeInfo {
  /** "replayed": nothing lost; "partial": `messagesLost` messages lost; "restarted": a new stream (new id). */
  readonly outcome: ResumeOutcomeName;
  /** The stream that was resumed (equal to the status's `streamId` unless restarted). */
  readonly previousStreamId: string;
  /** "partial": how many messages after the last one received could not be replayed. */
  readonly messagesLost: number;
  /** Measured here: from the break to the first message of the call that resumed. */
  readonly downtimeMs: number;
}

const EVENT_NAMES: Readonly<Partial<Record<StreamEvent, StreamEventName>>> = {
  [StreamEvent.STARTED]: "started",
  [StreamEvent.RECONNECTING]: "reconnecting",
  [StreamEvent.RECONNECTED]: "reconnected",
  [StreamEvent.SOURCE_ENDED]: "source_ended",
  [StreamEvent.ERROR]: "error",
  [StreamEvent.RESUMED]: "resumed",
};

export interface SourceInfo {
  readonly sourceIndex: number;
  readonly width: number;
  readonly height: number;
  readonly fps: number;
  /** 0 when unknown (live sources). */
  readonly frameCount: number;
}

/** The predictions for one processed frame. */
export interface StreamFrame {
  readonly kind: "frame";
  readonly streamId: string;
  readonly modelName: string;
  readonly modelVersion: string;
  /** Position of the message in its stream, from 1 (what a resume continues after). */
  readonly cursor: number;
  readonly sourceIndex: number;
  /** Position of the frame in its source, counting every decoded frame from 0 (skipped ones included). */
  readonly sequenceNumber: number;
  readonly sourceTimestampMs: number;
  /** Wall-clock time the server read the frame. */
  readonly captureTime: Date | undefined;
  readonly prediction: ImagePrediction | undefined;
  /** Cumulative: frames the pipeline skipped on this source to stay live. */
  readonly framesSkipped: number;
  /** Cumulative: results this subscriber lost by falling behind. */
  readonly resultsDropped: number;
  /** The frame as JPEG when `frameImage` asked for it, else empty. */
  readonly frameJpeg: Uint8Array;
  /** Streams with analytics: the zones and lines watching this source after the frame, and its events. */
  readonly analytics: FrameAnalytics | undefined;
}

/** The analytics events one frame caused (subscriptions with `content: "events"`). */
export interface StreamEvents {
  readonly kind: "events";
  readonly streamId: string;
  readonly cursor: number;
  readonly events: readonly AnalyticsEvent[];
}

/**
 * A change in the stream's state: started (with every source's properties), reconnecting, ended, error, or
 * resumed (this client re-issued a broken subscription; `resume` says what was lost).
 */
export interface StreamStatus {
  readonly kind: "status";
  readonly streamId: string;
  /** Position of the message in its stream; 0 on "resumed", which belongs to the subscription. */
  readonly cursor: number;
  readonly event: StreamEventName;
  readonly sourceIndex: number;
  readonly sources: readonly SourceInfo[];
  /** RECONNECTING: attempt number from 1. */
  readonly attempt: number;
  readonly reason: string;
  /** "resumed" only. */
  readonly resume: ResumeInfo | undefined;
}

export type StreamMessage = StreamFrame | StreamEvents | StreamStatus;

/**
 * A raw response -> a frame or a status; undefined for a payload this client does not know (a newer server).
 * `downtimeMs` is the client-measured gap a RESUMED status reports.
 */
export function streamMessageFromProto(message: StreamPredictionsResponse, downtimeMs = 0): StreamMessage | undefined {
  const payload = message.payload;
  if (payload.case === "frame") {
    const frame = payload.value;
    return {
      kind: "frame",
      streamId: message.streamId,
      modelName: message.modelName,
      modelVersion: message.modelVersion,
      cursor: Number(message.cursor),
      sourceIndex: frame.sourceIndex,
      sequenceNumber: Number(frame.sequenceNumber),
      sourceTimestampMs: frame.sourceTimestampMs,
      captureTime: frame.captureTime === undefined ? undefined : timestampDate(frame.captureTime),
      prediction: frame.prediction,
      framesSkipped: Number(frame.drops?.framesSkipped ?? 0n),
      resultsDropped: Number(frame.drops?.resultsDropped ?? 0n),
      frameJpeg: frame.frameJpeg,
      analytics: frame.analytics,
    };
  }
  if (payload.case === "events") {
    return { kind: "events", streamId: message.streamId, cursor: Number(message.cursor), events: payload.value.events };
  }
  if (payload.case === "status") {
    const status = payload.value;
    const event = EVENT_NAMES[status.event] ?? "error";
    const gap = status.resume;
    return {
      kind: "status",
      streamId: message.streamId,
      cursor: Number(message.cursor),
      event,
      sourceIndex: status.sourceIndex,
      sources: status.sources.map((s) => ({
        sourceIndex: s.sourceIndex,
        width: s.width,
        height: s.height,
        fps: s.fps,
        frameCount: Number(s.frameCount),
      })),
      attempt: status.attempt,
      reason: status.reason,
      resume:
        event === "resumed"
          ? {
              outcome: (gap === undefined ? undefined : OUTCOME_NAMES[gap.outcome]) ?? "unspecified",
              previousStreamId: gap?.previousStreamId ?? "",
              messagesLost: Number(gap?.messagesLost ?? 0n),
              downtimeMs,
            }
          : undefined,
    };
  }
  return undefined;
}

function describe(value: unknown): string {
  if (value === null) {
    return "null";
  }
  if (typeof value === "object") {
    return value.constructor?.name ?? "object";
  }
  return `${typeof value} ${String(value)}`;
}
