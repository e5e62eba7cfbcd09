/**
 * The bookkeeping behind resumable streams (docs/stream-resume.md): what to ask for when a broken subscription
 * is re-issued, how long to wait before asking, and which failures are worth asking again for.
 * No I/O here, so all of it is unit-tested without a server.
 */

import { Code } from "@connectrpc/connect";

import type { VisionRpcError } from "./errors.js";
import type { StreamPredictionsResponse } from "./gen/visionrpc/v1/inference_pb.js";

/** Consecutive re-issued calls without a message before a stream gives up and throws the last error. */
export const DEFAULT_MAX_RESUME_ATTEMPTS = 8;
/** The first backoff; it doubles per consecutive failure up to RESUME_BACKOFF_MAX_MS. */
export const RESUME_BACKOFF_INITIAL_MS = 50;
export const RESUME_BACKOFF_MAX_MS = 2_000;
/** Each delay is scaled by a random factor in [1 - jitter, 1 + jitter), so clients cut at once spread out. */
export const RESUME_BACKOFF_JITTER = 0.2;

/**
 * The wait before re-issue number `attempt` (1 for the first after a break): 50 ms doubling to at most 2 s,
 * +-20% jitter. `random` returns a number in [0, 1) (Math.random by default; tests pass their own).
 */
export function resumeBackoffMs(attempt: number, random: () => number = Math.random): number {
  const exponent = Math.max(0, Math.min(attempt - 1, 30)); // 2 ** 30 is far past the cap; avoids Infinity
  const base = Math.min(RESUME_BACKOFF_INITIAL_MS * 2 ** exponent, RESUME_BACKOFF_MAX_MS);
  return base * (1 - RESUME_BACKOFF_JITTER + 2 * RESUME_BACKOFF_JITTER * random());
}

/**
 * Whether a failed call is worth resuming: UNAVAILABLE (draining servers, recycled connections, refused
 * connections), or a transport failure that connect-node reports under another code. A connection that dies
 * under a call (server killed, proxy restarted) surfaces as CANCELLED "http/2 stream closed with error code
 * CANCEL", ABORTED (ECONNRESET) or INTERNAL (missing trailer); what tells those apart from the same codes sent
 * by a server is that no grpc-status ever arrived. The caller's own cancellation is ruled out before this.
 */
export function isResumable(error: VisionRpcError): boolean {
  if (error.code === Code.Unavailable) {
    return true;
  }
  const fromServer = error.metadata.has("grpc-status");
  return !fromServer && TRANSPORT_FAILURE_CODES.has(error.code);
}

const TRANSPORT_FAILURE_CODES: ReadonlySet<Code> = new Set([Code.Canceled, Code.Aborted, Code.Internal, Code.Unknown]);

/** Where a broken subscription picks up: the fields of StreamResume. */
export interface ResumePoint {
  readonly streamId: string;
  readonly afterCursor: bigint;
  readonly nextSequenceNumbers: readonly bigint[];
}

/**
 * Remembers, from the messages a subscription delivered, what a resume must ask for: the stream id, the last
 * non-zero cursor of that stream, and per source index the next frame sequence number wanted.
 */
export class ResumeState {
  #streamId = "";
  #afterCursor = 0n;
  #nextSequenceNumbers: bigint[] = [];
  #received = false;

  /** Records one delivered message. */
  observe(message: StreamPredictionsResponse): void {
    this.#received = true;
    if (message.streamId !== "" && message.streamId !== this.#streamId) {
      // A cursor is a position in one stream: a RESTARTED stream (new id) counts from 1 again, so the old
      // cursor would skip its first messages.
      this.#streamId = message.streamId;
      this.#afterCursor = 0n;
    }
    // 0 marks a RESUMED status, which belongs to the subscription, not to the stream.
    if (message.cursor !== 0n) {
      this.#afterCursor = message.cursor;
    }
    if (message.payload.case === "frame") {
      const frame = message.payload.value;
      while (this.#nextSequenceNumbers.length <= frame.sourceIndex) {
        this.#nextSequenceNumbers.push(0n); // a source with no frame yet starts from 0
      }
      this.#nextSequenceNumbers[frame.sourceIndex] = frame.sequenceNumber + 1n;
    }
  }

  /**
   * What to put in StreamPredictionsRequest.resume, or undefined while nothing (or nothing with a stream id)
   * arrived: then the original request is re-issued unchanged.
   */
  point(): ResumePoint | undefined {
    if (!this.#received || this.#streamId === "") {
      return undefined;
    }
    return {
      streamId: this.#streamId,
      afterCursor: this.#afterCursor,
      nextSequenceNumbers: [...this.#nextSequenceNumbers],
    };
  }
}
