// Resuming streams without a server: the bookkeeping (what a resume asks for), the backoff, which failures
// resume, and PredictionStream driven by scripted calls; address rotation against ports nobody listens on.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";

import { buildStreamRequest, resumeRequest } from "../src/convert.js";
import { VisionRpcError } from "../src/errors.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import {
  ResumeOutcome,
  StreamEvent,
  StreamPredictionsResponseSchema,
  type StreamPredictionsRequest,
  type StreamPredictionsResponse,
} from "../src/gen/visionrpc/v1/inference_pb.js";
import { createClient, type StreamMessage } from "../src/index.js";
import { ResumeState, isResumable, resumeBackoffMs } from "../src/resume.js";
import { PredictionStream, type PredictionStreamConfig, type StreamCalls } from "../src/stream.js";
import { deadAddress } from "./support.js";

// ------------------------------------------------------------------------------------------------ messages

function started(streamId: string, cursor: bigint): StreamPredictionsResponse {
  return create(StreamPredictionsResponseSchema, {
    streamId,
    cursor,
    payload: { case: "status", value: { event: StreamEvent.STARTED } },
  });
}

function ended(streamId: string, cursor: bigint): StreamPredictionsResponse {
  return create(StreamPredictionsResponseSchema, {
    streamId,
    cursor,
    payload: { case: "status", value: { event: StreamEvent.SOURCE_ENDED } },
  });
}

function frame(streamId: string, cursor: bigint, sequenceNumber: bigint, sourceIndex = 0): StreamPredictionsResponse {
  return create(StreamPredictionsResponseSchema, {
    streamId,
    cursor,
    payload: { case: "frame", value: { sourceIndex, sequenceNumber } },
  });
}

function resumed(
  streamId: string,
  previousStreamId: string,
  outcome: ResumeOutcome,
  messagesLost = 0n,
): StreamPredictionsResponse {
  return create(StreamPredictionsResponseSchema, {
    streamId,
    cursor: 0n,
    payload: {
      case: "status",
      value: { event: StreamEvent.RESUMED, resume: { outcome, previousStreamId, messagesLost } },
    },
  });
}

/** What connect-node reports for a connection that died under a call: no grpc-status ever arrived. */
const connectionDied = (): ConnectError =>
  new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled);

/** A status the server sent: grpc-status in the trailers. */
const serverStatus = (code: Code, message: string): ConnectError =>
  new ConnectError(message, code, new Headers({ "grpc-status": String(code) }));

/** What a draining server ends its streams with: UNAVAILABLE, ErrorInfo reason SHUTTING_DOWN. */
function drainingStatus(): ConnectError {
  const error = serverStatus(Code.Unavailable, "the server is shutting down");
  error.details.push({
    desc: ErrorInfoSchema,
    value: { reason: "SHUTTING_DOWN", domain: "visionrpc.dev" },
  });
  return error;
}

// ------------------------------------------------------------------------------------------------- backoff

describe("resumeBackoffMs", () => {
  const middle = (): number => 0.5;

  test("50 ms doubling, at most 2 s", () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 7, 8, 1000].map((attempt) => resumeBackoffMs(attempt, middle)),
      [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000],
    );
  });

  test("+-20% jitter", () => {
    assert.equal(
      resumeBackoffMs(1, () => 0),
      40,
    );
    assert.ok(Math.abs(resumeBackoffMs(1, () => 0.999999) - 60) < 1e-3);
    assert.equal(
      resumeBackoffMs(9, () => 0),
      1600,
    );
    for (let i = 0; i < 200; i++) {
      const delay = resumeBackoffMs(3);
      assert.ok(delay >= 160 && delay < 240, `attempt 3: ${delay} ms outside [160, 240)`);
    }
  });
});

// ----------------------------------------------------------------------------------------- which failures

describe("isResumable", () => {
  const cases: [string, ConnectError, boolean][] = [
    ["UNAVAILABLE from the server (draining, max connection age)", serverStatus(Code.Unavailable, "max age"), true],
    ["UNAVAILABLE from the transport (connection refused)", new ConnectError("ECONNREFUSED", Code.Unavailable), true],
    ["a connection that died (CANCEL without a status)", connectionDied(), true],
    ["a connection reset (ABORTED without a status)", new ConnectError("ECONNRESET", Code.Aborted), true],
    ["a missing trailer (INTERNAL without a status)", new ConnectError("missing trailer", Code.Internal), true],
    ["CANCELLED sent by the server", serverStatus(Code.Canceled, "cancelled"), false],
    ["INTERNAL sent by the server", serverStatus(Code.Internal, "bug"), false],
    ["NOT_FOUND", serverStatus(Code.NotFound, "no such stream"), false],
    ["FAILED_PRECONDITION", serverStatus(Code.FailedPrecondition, "source error"), false],
    ["a client-side deadline", new ConnectError("deadline", Code.DeadlineExceeded), false],
    ["a message over readMaxBytes", new ConnectError("too big", Code.ResourceExhausted), false],
  ];
  for (const [name, error, expected] of cases) {
    test(`${name}: ${expected}`, () => {
      assert.equal(isResumable(VisionRpcError.from(error)), expected);
    });
  }
});

// ------------------------------------------------------------------------------------------- bookkeeping

describe("ResumeState", () => {
  test("nothing received: no resume point (the original request is re-issued)", () => {
    assert.equal(new ResumeState().point(), undefined);
  });

  test("stream id, last cursor, next sequence number per source index", () => {
    const state = new ResumeState();
    state.observe(started("s1", 1n));
    assert.deepEqual(state.point(), { streamId: "s1", afterCursor: 1n, nextSequenceNumbers: [] });
    state.observe(frame("s1", 2n, 5n, 0));
    state.observe(frame("s1", 3n, 9n, 2)); // source 1 has no frame yet: it starts from 0
    state.observe(frame("s1", 7n, 6n, 0)); // a lossy subscriber's cursor jumps
    assert.deepEqual(state.point(), { streamId: "s1", afterCursor: 7n, nextSequenceNumbers: [7n, 0n, 10n] });
  });

  test("a RESUMED status (cursor 0) keeps the cursor", () => {
    const state = new ResumeState();
    state.observe(started("s1", 1n));
    state.observe(frame("s1", 2n, 0n));
    state.observe(resumed("s1", "s1", ResumeOutcome.REPLAYED));
    assert.deepEqual(state.point(), { streamId: "s1", afterCursor: 2n, nextSequenceNumbers: [1n] });
  });

  test("a restarted stream counts cursors from its own start; sequence numbers carry over", () => {
    const state = new ResumeState();
    state.observe(started("s1", 1n));
    state.observe(frame("s1", 40n, 38n));
    state.observe(resumed("s2", "s1", ResumeOutcome.RESTARTED));
    // Broken again before the new stream's first message: resume s2 from its beginning, not after 40.
    assert.deepEqual(state.point(), { streamId: "s2", afterCursor: 0n, nextSequenceNumbers: [39n] });
    state.observe(started("s2", 1n));
    state.observe(frame("s2", 2n, 39n));
    assert.deepEqual(state.point(), { streamId: "s2", afterCursor: 2n, nextSequenceNumbers: [40n] });
  });

  test("resumeRequest keeps the stream's description and leaves the original alone", () => {
    const original = buildStreamRequest({ sources: ["bikes.mp4"], maxFps: 25, everyFrameDelivery: true });
    const request = resumeRequest(original, { streamId: "s1", afterCursor: 7n, nextSequenceNumbers: [6n] });
    assert.equal(request.sources[0]?.source.value, "bikes.mp4");
    assert.equal(request.streamOptions?.maxFps, 25);
    assert.deepEqual(
      [request.resume?.streamId, request.resume?.afterCursor, request.resume?.nextSequenceNumbers],
      ["s1", 7n, [6n]],
    );
    assert.equal(original.resume, undefined);
  });
});

// ------------------------------------------------------------------------------------- the resume loop

/** One scripted call: the messages it delivers, then the error it fails with (or a normal end). */
interface Script {
  messages: StreamPredictionsResponse[];
  error?: ConnectError;
}

/** StreamCalls that play scripts in order and record each request. */
class ScriptedCalls implements StreamCalls {
  readonly requests: StreamPredictionsRequest[] = [];
  closed = false;
  readonly #scripts: Script[];

  constructor(scripts: Script[]) {
    this.#scripts = scripts;
  }

  open(request: StreamPredictionsRequest, signal: AbortSignal): AsyncIterable<StreamPredictionsResponse> {
    this.requests.push(request);
    const script = this.#scripts.shift() ?? { messages: [], error: serverStatus(Code.Internal, "no more scripts") };
    return (async function* () {
      for (const message of script.messages) {
        if (signal.aborted) {
          throw new ConnectError("aborted", Code.Canceled);
        }
        yield message;
      }
      if (script.error !== undefined) {
        throw script.error;
      }
    })();
  }

  isClosed(): boolean {
    return this.closed;
  }
}

const ORIGINAL = buildStreamRequest({ sources: ["bikes.mp4"], everyFrameDelivery: true });

function stream(calls: StreamCalls, config: PredictionStreamConfig = {}): PredictionStream {
  return new PredictionStream(calls, ORIGINAL, { backoffMs: () => 1, ...config });
}

async function collect(events: AsyncIterable<StreamMessage>): Promise<StreamMessage[]> {
  const out: StreamMessage[] = [];
  for await (const event of events) {
    out.push(event);
  }
  return out;
}

describe("PredictionStream resumes", () => {
  test("a broken call is re-issued after the last cursor; the RESUMED status reaches the caller", async () => {
    const calls = new ScriptedCalls([
      { messages: [started("s1", 1n), frame("s1", 2n, 0n)], error: serverStatus(Code.Unavailable, "max age") },
      { messages: [resumed("s1", "s1", ResumeOutcome.REPLAYED), frame("s1", 3n, 1n), ended("s1", 4n)] },
    ]);
    const subscription = stream(calls, { backoffMs: () => 30 });
    const events = await collect(subscription);

    assert.deepEqual(
      events.map((e) => (e.kind === "frame" ? `frame ${e.sequenceNumber}` : e.kind === "status" ? e.event : e.kind)),
      ["started", "frame 0", "resumed", "frame 1", "source_ended"],
    );
    assert.equal(calls.requests[0], ORIGINAL, "the first call is the original request");
    assert.deepEqual(
      [calls.requests[1]?.resume?.streamId, calls.requests[1]?.resume?.afterCursor],
      ["s1", 2n],
      "the second call resumes after cursor 2",
    );
    assert.deepEqual(calls.requests[1]?.resume?.nextSequenceNumbers, [1n]);
    assert.equal(calls.requests[1]?.sources[0]?.source.value, "bikes.mp4", "the stream is still described");
    const status = events[2];
    assert.ok(status?.kind === "status" && status.resume !== undefined);
    assert.equal(status.resume.outcome, "replayed");
    assert.equal(status.resume.previousStreamId, "s1");
    assert.equal(status.resume.messagesLost, 0);
    assert.ok(status.resume.downtimeMs >= 29, `downtime ${status.resume.downtimeMs} ms spans the backoff`);
    assert.equal(status.cursor, 0);
    assert.equal(subscription.resumes, 1);
  });

  test("a connection that died (no status) resumes too; a restart reports the new stream", async () => {
    const calls = new ScriptedCalls([
      { messages: [started("s1", 1n), frame("s1", 2n, 0n)], error: connectionDied() },
      { messages: [resumed("s2", "s1", ResumeOutcome.RESTARTED), started("s2", 1n), frame("s2", 2n, 1n)] },
    ]);
    const events = await collect(stream(calls));
    const status = events.find((e) => e.kind === "status" && e.event === "resumed");
    assert.ok(status?.kind === "status");
    assert.deepEqual(
      [status.streamId, status.resume?.outcome, status.resume?.previousStreamId],
      ["s2", "restarted", "s1"],
    );
  });

  test("nothing received yet: the original request is re-issued unchanged", async () => {
    const calls = new ScriptedCalls([
      { messages: [], error: new ConnectError("connect ECONNREFUSED", Code.Unavailable) },
      { messages: [started("s1", 1n), ended("s1", 2n)] },
    ]);
    assert.equal((await collect(stream(calls))).length, 2);
    assert.equal(calls.requests[1], ORIGINAL);
  });

  test("gives up after maxResumeAttempts calls without a message, throwing the last error", async () => {
    const calls = new ScriptedCalls([
      { messages: [started("s1", 1n)], error: serverStatus(Code.Unavailable, "draining") },
      ...[1, 2, 3].map((i) => ({ messages: [], error: new ConnectError(`refused ${i}`, Code.Unavailable) })),
    ]);
    const err = await collect(stream(calls, { maxResumeAttempts: 3 })).catch((e: unknown) => e);
    assert.ok(err instanceof VisionRpcError, String(err));
    assert.equal(err.codeName, "UNAVAILABLE");
    assert.equal(err.rawMessage, "refused 3");
    assert.equal(calls.requests.length, 4, "the first call and 3 resumes");
  });

  test("a message resets the count of attempts", async () => {
    const unavailable = (): ConnectError => serverStatus(Code.Unavailable, "unavailable");
    const calls = new ScriptedCalls([
      { messages: [started("s1", 1n)], error: unavailable() },
      { messages: [], error: unavailable() },
      { messages: [resumed("s1", "s1", ResumeOutcome.REPLAYED)], error: unavailable() },
      { messages: [], error: unavailable() },
      { messages: [resumed("s1", "s1", ResumeOutcome.REPLAYED), ended("s1", 2n)] },
    ]);
    const last = (await collect(stream(calls, { maxResumeAttempts: 2 }))).at(-1);
    assert.equal(last?.kind === "status" ? last.event : last?.kind, "source_ended");
  });

  test("backoff delays grow per consecutive failure and start over after a message", async () => {
    const attempts: number[] = [];
    const calls = new ScriptedCalls([
      { messages: [], error: connectionDied() },
      { messages: [], error: connectionDied() },
      { messages: [started("s1", 1n)], error: connectionDied() },
      { messages: [ended("s1", 2n)] },
    ]);
    await collect(stream(calls, { backoffMs: (attempt) => (attempts.push(attempt), 1) }));
    assert.deepEqual(attempts, [1, 2, 1]);
  });

  test("any other status ends the stream at once", async () => {
    const calls = new ScriptedCalls([
      { messages: [started("s1", 1n)], error: serverStatus(Code.FailedPrecondition, "source failed") },
    ]);
    const err = await collect(stream(calls)).catch((e: unknown) => e);
    assert.ok(err instanceof VisionRpcError);
    assert.equal(err.codeName, "FAILED_PRECONDITION");
    assert.equal(calls.requests.length, 1);
  });

  test("resume: false throws the first UNAVAILABLE", async () => {
    const calls = new ScriptedCalls([{ messages: [started("s1", 1n)], error: serverStatus(Code.Unavailable, "x") }]);
    const err = await collect(stream(calls, { resume: false })).catch((e: unknown) => e);
    assert.ok(err instanceof VisionRpcError);
    assert.equal(err.codeName, "UNAVAILABLE");
    assert.equal(calls.requests.length, 1);
  });

  test("cancelling during the backoff ends the stream without an error and without another call", async () => {
    const calls = new ScriptedCalls([{ messages: [started("s1", 1n)], error: connectionDied() }]);
    const controller = new AbortController();
    const subscription = stream(calls, { signal: controller.signal, backoffMs: () => 60_000 });
    setTimeout(() => controller.abort(), 20);
    const startedAt = Date.now();
    const events = await collect(subscription);
    assert.ok(Date.now() - startedAt < 5_000, "the backoff was cut short");
    assert.equal(events.length, 1);
    assert.ok(subscription.cancelled);
    assert.equal(calls.requests.length, 1);
  });

  test("a closed client does not resume", async () => {
    const calls = new ScriptedCalls([{ messages: [started("s1", 1n)], error: connectionDied() }]);
    calls.closed = true;
    const err = await collect(stream(calls)).catch((e: unknown) => e);
    assert.ok(err instanceof VisionRpcError);
    assert.equal(calls.requests.length, 1);
  });

  test("maxResumeAttempts is checked", () => {
    assert.throws(() => stream(new ScriptedCalls([]), { maxResumeAttempts: 0 }), /maxResumeAttempts: expected/);
  });
});

// ---------------------------------------------------------------------------------------- address rotation

describe("several addresses", () => {
  test("a stream resumes on the next address, in turn", async () => {
    const addresses = [await deadAddress(), await deadAddress()];
    const urls: string[] = [];
    const record: Interceptor = (next) => (req) => {
      urls.push(new URL(req.url).host);
      return next(req);
    };
    const client = createClient(addresses, { interceptors: [record] });
    try {
      const err = await collect(client.stream({ sources: ["bikes.mp4"] }, { maxResumeAttempts: 2 })).catch(
        (e: unknown) => e,
      );
      assert.ok(err instanceof VisionRpcError, String(err));
      assert.equal(err.codeName, "UNAVAILABLE");
      assert.deepEqual(urls, [addresses[0], addresses[1], addresses[0]]);
    } finally {
      client.close();
    }
  });

  test("a stream cut after messages resumes on the same address; a draining server is left", async () => {
    const addresses = [await deadAddress(), await deadAddress()];
    const urls: string[] = [];
    // Plays the server: no connection is made. Each call answers with what `script` gives for its number.
    const script: (() => AsyncIterable<StreamPredictionsResponse>)[] = [
      async function* () {
        yield started("s1", 1n);
        throw serverStatus(Code.Unavailable, "max connection age"); // recycled: s1 still runs there
      },
      async function* () {
        yield resumed("s1", "s1", ResumeOutcome.REPLAYED);
        throw drainingStatus(); // the server drains: leave it
      },
      async function* () {
        yield resumed("s2", "s1", ResumeOutcome.RESTARTED);
        yield ended("s2", 1n);
      },
    ];
    const play: Interceptor = () => async (req) => {
      urls.push(new URL(req.url).host);
      const next = script.shift();
      assert.ok(next !== undefined && req.stream, "one scripted server-streaming call per attempt");
      return { ...req, stream: true, header: new Headers(), trailer: new Headers(), message: next() } as StreamResponse;
    };
    const client = createClient(addresses, { interceptors: [play] });
    try {
      const events = await collect(client.stream({ sources: ["bikes.mp4"] }));
      assert.deepEqual(
        events.map((e) => (e.kind === "status" ? e.event : e.kind)),
        ["started", "resumed", "resumed", "source_ended"],
      );
      assert.deepEqual(urls, [addresses[0], addresses[0], addresses[1]]);
    } finally {
      client.close();
    }
  });

  test("a unary call that finds a server unavailable moves the client on", async () => {
    const addresses = [await deadAddress(), await deadAddress()];
    const urls: string[] = [];
    const record: Interceptor = (next) => (req) => {
      urls.push(new URL(req.url).host);
      return next(req);
    };
    const client = createClient(addresses, { interceptors: [record] });
    try {
      assert.deepEqual(client.addresses, addresses);
      assert.equal(client.address, addresses[0]);
      await assert.rejects(client.health(), (e: unknown) => e instanceof VisionRpcError && e.retryable);
      await assert.rejects(client.health(), (e: unknown) => e instanceof VisionRpcError && e.retryable);
      assert.deepEqual(urls, [addresses[0], addresses[1]]);
    } finally {
      client.close();
    }
  });

  test("an empty address list is refused", () => {
    assert.throws(() => createClient([]), /expected at least one address/);
  });
});
