/**
 * Frames pushed to the server on one bidirectional call (`client.inferStream`): the protobuf edge of it.
 *
 * One result per frame, in the order sent. A frame the server refuses (an undecodable image, a sequence number
 * that did not increase) comes back with `error` set (a VisionRpcError, not thrown: the call goes on); with
 * `drop: true` a frame that arrives while `maxInFlight` frames are being inferred comes back `dropped`. By
 * default (wait) the server stops reading while `maxInFlight` frames are unanswered, so the frames iterable is
 * consumed no faster than the server infers. Errors of the call itself (unknown model, bad options) are thrown
 * from iteration.
 */

import { create, type MessageInitShape } from "@bufbuild/protobuf";

import type { FrameAnalytics, StreamAnalyticsSchema } from "./gen/visionrpc/v1/analytics_pb.js";
import {
  Backpressure,
  InferStreamRequestSchema,
  type InferStreamRequest,
  type InferStreamResponse,
} from "./gen/visionrpc/v1/inference_pb.js";
import type { ImagePrediction } from "./gen/visionrpc/v1/types_pb.js";
import { imageToProto, optionsToProto, type ImageInput, type InferOptions } from "./convert.js";
import { errorFromStatus, VisionRpcError } from "./errors.js";

/** A frame with its own numbering (increasing per source; default: one more than the source's last, from 0). */
export interface InputFrame {
  image: ImageInput;
  sequenceNumber?: number | bigint;
  /** Which of the caller's cameras (tracking and analytics are per source). Default 0. */
  sourceIndex?: number;
  /** Time in the source in ms (dwell times use it); 0 or omitted: when the server receives it. */
  timestampMs?: number;
}

/** What `inferStream()` configures: the model and its options, analytics, and back-pressure. */
export interface InferStreamRequestOptions extends Omit<InferOptions, "topK"> {
  /** "name" or "name/version"; the server's default model when omitted. */
  model?: string;
  /** Tracking, zones and lines, applied per source (a `visionrpc.v1.StreamAnalytics` init shape). */
  analytics?: MessageInitShape<typeof StreamAnalyticsSchema>;
  /** Frames the server holds unanswered: 1 to 64; the server's default (8) when omitted. */
  maxInFlight?: number;
  /** Past `maxInFlight`, answer frames `dropped` at once (a live camera stays live) instead of waiting. */
  drop?: boolean;
}

/** The answer to one frame: exactly one of `prediction`, `dropped` or `error`. */
export interface FrameResult {
  sequenceNumber: bigint;
  sourceIndex: number;
  modelName: string;
  modelVersion: string;
  prediction: ImagePrediction | undefined;
  dropped: boolean;
  error: VisionRpcError | undefined;
  /** With analytics: the zones and lines watching this source and the events this frame caused. */
  analytics: FrameAnalytics | undefined;
}

export type FrameInput = ImageInput | InputFrame;

/** The call's first message. Throws RangeError for a bad maxInFlight (before any RPC). */
export function buildInferStreamConfig(options: InferStreamRequestOptions): InferStreamRequest {
  const maxInFlight = options.maxInFlight ?? 0;
  if (options.maxInFlight !== undefined && !(Number.isInteger(maxInFlight) && maxInFlight >= 1 && maxInFlight <= 64)) {
    throw new RangeError(`maxInFlight: expected an integer in [1, 64], got ${String(options.maxInFlight)}`);
  }
  return create(InferStreamRequestSchema, {
    message: {
      case: "config",
      value: {
        modelId: options.model ?? "",
        options: optionsToProto(options),
        maxInFlight,
        backpressure: options.drop === true ? Backpressure.DROP : Backpressure.WAIT,
        ...(options.analytics === undefined ? {} : { analytics: options.analytics }),
      },
    },
  });
}

function isInputFrame(item: FrameInput): item is InputFrame {
  return typeof item === "object" && item !== null && !(item instanceof Uint8Array) && "image" in item;
}

/**
 * The requests of a call: the config, then each frame as the transport asks for it. Whatever the caller's
 * iterable (or an image's conversion) throws ends the frames and is kept in `failure` for the reader.
 */
export class FrameRequests {
  failure: unknown = undefined;

  constructor(
    private readonly config: InferStreamRequest,
    private readonly frames: Iterable<FrameInput> | AsyncIterable<FrameInput>,
  ) {}

  async *[Symbol.asyncIterator](): AsyncGenerator<InferStreamRequest, void, undefined> {
    yield this.config;
    const next = new Map<number, bigint>();
    let index = 0;
    try {
      for await (const item of this.frames) {
        const frame: InputFrame = isInputFrame(item) ? item : { image: item };
        const sourceIndex = frame.sourceIndex ?? 0;
        const sequenceNumber =
          frame.sequenceNumber === undefined ? (next.get(sourceIndex) ?? 0n) : BigInt(frame.sequenceNumber);
        next.set(sourceIndex, sequenceNumber + 1n);
        yield create(InferStreamRequestSchema, {
          message: {
            case: "frame",
            value: {
              sequenceNumber,
              sourceIndex,
              timestampMs: frame.timestampMs ?? 0,
              image: await imageToProto(frame.image, index),
            },
          },
        });
        index += 1;
      }
    } catch (err) {
      this.failure = err;
    }
  }
}

export function frameResultFromProto(message: InferStreamResponse): FrameResult {
  const outcome = message.outcome;
  return {
    sequenceNumber: message.sequenceNumber,
    sourceIndex: message.sourceIndex,
    modelName: message.modelName,
    modelVersion: message.modelVersion,
    prediction: outcome.case === "prediction" ? outcome.value : undefined,
    dropped: outcome.case === "dropped" && outcome.value,
    error: outcome.case === "error" ? errorFromStatus(outcome.value) : undefined,
    analytics: message.analytics,
  };
}
