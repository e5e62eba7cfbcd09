/**
 * Subscribing to server-side video pipelines: `client.stream(...)` returns a `PredictionStream`.
 *
 * @example
 * const stream = client.stream({ sources: ["clips/bikes.mp4"], maxFps: 10 });
 * for await (const event of stream) {
 *   if (event.kind === "frame") console.log(event.sequenceNumber, event.prediction?.detections.length);
 *   if (event.kind === "status" && event.event === "resumed") console.log(event.resume);
 *   if (event.kind === "frame" && event.sequenceNumber >= 100) break; // cancels the RPC
 * }
 *
 * Breaking out of `for await`, `cancel()`, or aborting the `signal` given to `stream()` cancels the RPC (an
 * HTTP/2 RST_STREAM the server sees at once) and ends the iteration normally: cancelling is not an error.
 *
 * A subscription outlives its calls (docs/stream-resume.md): when a call fails with UNAVAILABLE or the
 * connection under it dies, the stream waits a backoff and re-issues the request with `resume` set, and the
 * server continues after the last message received (or starts the stream again and says so). The caller sees
 * one uninterrupted iteration with a "resumed" status at each seam.
 */

import { Code, ConnectError } from "@connectrpc/connect";

import { resumeRequest, streamMessageFromProto, type StreamMessage } from "./convert.js";
import { VisionRpcError } from "./errors.js";
import type { StreamPredictionsRequest, StreamPredictionsResponse } from "./gen/visionrpc/v1/inference_pb.js";
import { DEFAULT_MAX_RESUME_ATTEMPTS, ResumeState, isResumable, resumeBackoffMs } from "./resume.js";

/**
 * What a stream needs from its client: one call per attempt (the client picks the address), and whether the
 * client was closed (a closed client's failed call is not resumed).
 */
export interface StreamCalls {
  /** Opens one call; the signal aborts it; `timeoutMs` is that call's deadline (none when undefined). */
  open(
    request: StreamPredictionsRequest,
    signal: AbortSignal,
    timeoutMs: number | undefined,
  ): AsyncIterable<StreamPredictionsResponse>;
  isClosed(): boolean;
}

/** How a PredictionStream runs; `client.stream()` fills it from `StreamCallOptions`. */
export interface PredictionStreamConfig {
  /** Aborting it cancels the subscription. */
  signal?: AbortSignal | undefined;
  /** Deadline of the whole subscription (every call and backoff together), in ms. */
  timeoutMs?: number | undefined;
  /** Re-issue a broken subscription (default true). */
  resume?: boolean | undefined;
  /** Consecutive re-issued calls without a message before giving up (default 8). */
  maxResumeAttempts?: number | undefined;
  /** The wait before re-issue number `attempt` (default `resumeBackoffMs`); tests shorten it. */
  backoffMs?: ((attempt: number) => number) | undefined;
}

/** A received message and, on the first message of a call that resumed, how long the subscription was broken. */
interface Received {
  readonly message: StreamPredictionsResponse;
  readonly downtimeMs: number;
}

/**
 * One subscription, iterable once: `for await (const event of stream)` yields `StreamFrame` and `StreamStatus`
 * events; `messages()` yields the raw `StreamPredictionsResponse` messages instead. The call starts when the
 * iteration does.
 *
 * A failed stream throws a `VisionRpcError` from the loop (e.g. FAILED_PRECONDITION after an "error" status,
 * NOT_FOUND for a missing file, UNAVAILABLE once resuming gave up).
 */
export class PredictionStream implements AsyncIterable<StreamMessage> {
  readonly #calls: StreamCalls;
  readonly #request: StreamPredictionsRequest;
  readonly #signal: AbortSignal | undefined;
  readonly #timeoutMs: number | undefined;
  readonly #resume: boolean;
  readonly #maxResumeAttempts: number;
  readonly #backoffMs: (attempt: number) => number;
  // Our own controller, not the caller's signal: connect-es's streaming iterator has no return(), so leaving a
  // `for await` early would otherwise leave the HTTP/2 stream open and the server subscription alive. It also
  // cuts a backoff wait short.
  readonly #controller = new AbortController();
  #cancelled = false;
  #started = false;
  #resumes = 0;

  /** Built by `client.stream()`. */
  constructor(calls: StreamCalls, request: StreamPredictionsRequest, config: PredictionStreamConfig = {}) {
    const maxResumeAttempts = config.maxResumeAttempts ?? DEFAULT_MAX_RESUME_ATTEMPTS;
    if (!Number.isInteger(maxResumeAttempts) || maxResumeAttempts < 1) {
      throw new RangeError(`maxResumeAttempts: expected an integer >= 1, got ${maxResumeAttempts}`);
    }
    this.#calls = calls;
    this.#request = request;
    this.#signal = config.signal;
    this.#timeoutMs = config.timeoutMs;
    this.#resume = config.resume ?? true;
    this.#maxResumeAttempts = maxResumeAttempts;
    this.#backoffMs = config.backoffMs ?? ((attempt) => resumeBackoffMs(attempt));
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

  /** How many times this subscription was re-issued after a break (whether or not the new call answered). */
  get resumes(): number {
    return this.#resumes;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<StreamMessage, void, undefined> {
    for await (const { message, downtimeMs } of this.#receive()) {
      const event = streamMessageFromProto(message, downtimeMs);
      if (event !== undefined) {
        yield event;
      }
    }
  }

  /** The raw StreamPredictionsResponse messages (to forward them, or print them as JSON with toJson). */
  async *messages(): AsyncGenerator<StreamPredictionsResponse, void, undefined> {
    for await (const { message } of this.#receive()) {
      yield message;
    }
  }

  /** Every message of every call of the subscription, resuming across breaks. */
  async *#receive(): AsyncGenerator<Received, void, undefined> {
    if (this.#started) {
      throw new Error("a PredictionStream can be iterated only once; call client.stream() again");
    }
    this.#started = true;
    const onAbort = (): void => this.cancel();
    this.#signal?.addEventListener("abort", onAbort, { once: true });
    if (this.#signal?.aborted === true) {
      this.cancel();
    }
    const deadline = this.#timeoutMs === undefined ? undefined : Date.now() + this.#timeoutMs;
    const state = new ResumeState();
    let failures = 0; // consecutive failed calls since the last message
    let brokeAt: number | undefined; // when the subscription broke; undefined while it is whole
    let finished = false;
    try {
      for (;;) {
        const point = state.point();
        const request = point === undefined ? this.#request : resumeRequest(this.#request, point);
        try {
          for await (const message of this.#calls.open(request, this.#controller.signal, remaining(deadline))) {
            failures = 0;
            const downtimeMs = brokeAt === undefined ? 0 : performance.now() - brokeAt;
            brokeAt = undefined;
            state.observe(message);
            yield { message, downtimeMs };
          }
          finished = true;
          return;
        } catch (err) {
          if (this.#cancelled && err instanceof ConnectError) {
            finished = true;
            return; // our own cancellation is a normal end, not an error
          }
          const error = VisionRpcError.from(err);
          if (!this.#resume || this.#calls.isClosed() || !isResumable(error) || failures >= this.#maxResumeAttempts) {
            finished = true;
            throw error;
          }
          failures += 1;
          brokeAt ??= performance.now();
          await abortableSleep(this.#backoffMs(failures), this.#controller.signal);
          if (this.#cancelled) {
            finished = true;
            return;
          }
          if (this.#calls.isClosed()) {
            finished = true;
            throw error; // closed while waiting: the break is the last word
          }
          if (deadline !== undefined && Date.now() >= deadline) {
            finished = true;
            throw new VisionRpcError(
              new ConnectError(
                "the stream's deadline passed while resuming",
                Code.DeadlineExceeded,
                undefined,
                [],
                error,
              ),
            );
          }
          this.#resumes += 1;
        }
      }
    } finally {
      this.#signal?.removeEventListener("abort", onAbort);
      if (!finished) {
        // Reached by `break`, `return` or a throw in the loop body while the call is still open.
        this.cancel();
      }
    }
  }
}

/** Milliseconds left until `deadline` (at least 1, so that a call still fails with DEADLINE_EXCEEDED itself). */
function remaining(deadline: number | undefined): number | undefined {
  return deadline === undefined ? undefined : Math.max(1, deadline - Date.now());
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
