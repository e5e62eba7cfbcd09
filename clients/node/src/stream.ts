/**
 * Subscribing to server-side video pipelines: `client.stream(...)` returns a `PredictionStream`.
 *
 * @example
 * const stream = client.stream({ sources: ["clips/bikes.mp4"], maxFps: 10 });
 * for await (const event of stream) {
 *   if (event.kind === "frame") console.log(event.sequenceNumber, event.prediction?.detections.length);
 *   if (event.kind === "frame" && event.sequenceNumber >= 100) break; // cancels the RPC
 * }
 *
 * Breaking out of `for await`, `cancel()`, or aborting the `signal` given to `stream()` cancels the RPC (an
 * HTTP/2 RST_STREAM the server sees at once) and ends the iteration normally: cancelling is not an error.
 */

import { ConnectError } from "@connectrpc/connect";

import { streamMessageFromProto, type StreamMessage } from "./convert.js";
import { VisionRpcError } from "./errors.js";
import type { StreamPredictionsResponse } from "./gen/visionrpc/v1/inference_pb.js";

/** Opens the call; the signal aborts it. */
export type OpenStream = (signal: AbortSignal) => AsyncIterable<StreamPredictionsResponse>;

/**
 * One subscription, iterable once: `for await (const event of stream)` yields `StreamFrame` and `StreamStatus`
 * events; `messages()` yields the raw `StreamPredictionsResponse` messages instead. The call starts when the
 * iteration does.
 *
 * A failed stream throws a `VisionRpcError` from the loop (e.g. FAILED_PRECONDITION after an "error" status,
 * NOT_FOUND for a missing file, UNAVAILABLE when the server shuts down).
 */
export class PredictionStream implements AsyncIterable<StreamMessage> {
  readonly #open: OpenStream;
  readonly #signal: AbortSignal | undefined;
  // Our own controller, not the caller's signal: connect-es's streaming iterator has no return(), so leaving a
  // `for await` early would otherwise leave the HTTP/2 stream open and the server subscription alive.
  readonly #controller = new AbortController();
  #cancelled = false;
  #started = false;

  constructor(open: OpenStream, signal?: AbortSignal) {
    this.#open = open;
    this.#signal = signal;
  }

  /** Cancels the subscription (the server frees it at once); the iteration ends without an error. Idempotent. */
  cancel(): void {
    this.#cancelled = true;
    this.#controller.abort();
  }

  /** True once this client cancelled the call (cancel(), the signal, or leaving the loop early). */
  get cancelled(): boolean {
    return this.#cancelled;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<StreamMessage, void, undefined> {
    for await (const message of this.messages()) {
      const event = streamMessageFromProto(message);
      if (event !== undefined) {
        yield event;
      }
    }
  }

  /** The raw StreamPredictionsResponse messages (to forward them, or print them as JSON with toJson). */
  async *messages(): AsyncGenerator<StreamPredictionsResponse, void, undefined> {
    if (this.#started) {
      throw new Error("a PredictionStream can be iterated only once; call client.stream() again");
    }
    this.#started = true;
    const onAbort = (): void => this.cancel();
    this.#signal?.addEventListener("abort", onAbort, { once: true });
    if (this.#signal?.aborted === true) {
      this.cancel();
    }
    let finished = false;
    try {
      for await (const message of this.#open(this.#controller.signal)) {
        yield message;
      }
      finished = true;
    } catch (err) {
      finished = true;
      if (this.#cancelled && err instanceof ConnectError) {
        return; // our own cancellation is a normal end, not an error
      }
      throw VisionRpcError.from(err);
    } finally {
      this.#signal?.removeEventListener("abort", onAbort);
      if (!finished) {
        // Reached by `break`, `return` or a throw in the loop body while the call is still open.
        this.cancel();
      }
    }
  }
}
