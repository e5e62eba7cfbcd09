/**
 * The client: one HTTP/2 connection per server address (connect-es's gRPC transport), typed methods, errors as
 * `VisionRpcError`.
 *
 * @example
 * import { createClient } from "@visionrpc/client";
 *
 * const client = createClient("127.0.0.1:50051", { timeoutMs: 30_000 });
 * const result = await client.infer(["coffee.png"], { confidence: 0.4 });
 * for (const det of result.predictions[0]?.detections ?? []) {
 *   console.log(det.className, det.confidence.toFixed(2), det.box);
 * }
 * client.close();
 */

import {
  Code,
  ConnectError,
  createClient as createConnectClient,
  type Client as ConnectClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import {
  buildInferRequest,
  buildStreamRequest,
  type ImageInput,
  type InferOptions,
  type StreamRequest,
} from "./convert.js";
import { VisionRpcError } from "./errors.js";
import {
  buildInferStreamConfig,
  frameResultFromProto,
  FrameRequests,
  type FrameInput,
  type FrameResult,
  type InferStreamRequestOptions,
} from "./inferStream.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import {
  InferenceService,
  type InferResponse,
  type StreamPredictionsRequest,
  type StreamPredictionsResponse,
} from "./gen/visionrpc/v1/inference_pb.js";
import { ModelService, type Model } from "./gen/visionrpc/v1/models_pb.js";
import { withPipelineKey } from "./pipelineKey.js";
import { isResumable } from "./resume.js";
import { PredictionStream } from "./stream.js";

export const DEFAULT_ADDRESS = "127.0.0.1:50051";
/** ErrorInfo.reason of the UNAVAILABLE that ends every stream of a draining server. */
const SHUTTING_DOWN = "SHUTTING_DOWN";
const MIB = 1024 * 1024;

/** TLS settings (node:tls); `true` uses the system's trusted CAs. */
export interface TlsOptions {
  /** PEM CA certificate(s) to trust instead of the system's. */
  ca?: string | Uint8Array | readonly (string | Uint8Array)[];
  /** PEM client certificate and key, for mutual TLS. */
  cert?: string | Uint8Array;
  key?: string | Uint8Array;
  /** The name to verify in the server's certificate, when it differs from the address's host. */
  servername?: string;
}

export interface ClientOptions {
  /** Connect with TLS (`https`). Omitted: plaintext, as on loopback or inside a mesh that does mTLS. */
  tls?: boolean | TlsOptions;
  /**
   * Deadline of each unary call in milliseconds unless the call gives its own; `null` waits forever.
   * Default 30 000. Streams have no deadline unless `stream()` is given one.
   */
  timeoutMs?: number | null;
  /**
   * Limit on request and response message size, both ways. Keep it equal to the server's
   * `--max-message-bytes` (16 MiB by default). Default 16 MiB.
   */
  maxMessageBytes?: number;
  /**
   * Interval of HTTP/2 keepalive PINGs while calls are in flight (gRPC core's keepalive_time_ms), so a dead
   * connection through a NAT or proxy is noticed within keepaliveTimeMs + keepaliveTimeoutMs. `null` turns
   * keepalive off. Default 30 000; the visionrpc server accepts pings every 10 s.
   */
  keepaliveTimeMs?: number | null;
  /** How long a keepalive PING may go unanswered before the connection is dropped. Default 10 000. */
  keepaliveTimeoutMs?: number;
  /**
   * Also PING idle connections (keepalive_permit_without_calls). Default false: proxies and servers with gRPC's
   * default policy answer pings on idle connections with GOAWAY "too_many_pings".
   */
  keepaliveWithoutCalls?: boolean;
  /** Close the connection after this long without calls. Default 15 minutes (connect-es's default). */
  idleConnectionTimeoutMs?: number;
  /** connect-es interceptors (auth headers, logging) applied to every call. */
  interceptors?: Interceptor[];
  /**
   * Sent with every call as `authorization: Bearer <key>`; the server's `--api-keys-file` (or, for load and
   * unload, `--admin-keys-file`) must hold it. Use it with `tls`, or inside a mesh whose sidecars encrypt the hop.
   */
  apiKey?: string;
}

/** Request headers (gRPC metadata), in any form `new Headers()` accepts. */
export type HeadersInit = Headers | Record<string, string> | [string, string][];

/** Per-call options. */
export interface CallOptions {
  /** This call's deadline in ms; the client's `timeoutMs` when omitted, none when `null`. */
  timeoutMs?: number | null;
  /** Aborting it cancels the call; the promise rejects with a VisionRpcError of code Canceled. */
  signal?: AbortSignal;
  /** Extra request headers (gRPC metadata). */
  headers?: HeadersInit;
}

export interface InferCallOptions extends InferOptions, CallOptions {
  /** "name" or "name/version"; the server's default model when omitted. */
  model?: string;
}

export interface StreamCallOptions {
  /** Aborting it cancels the subscription; the iteration then ends without an error. */
  signal?: AbortSignal;
  /**
   * Deadline of the whole stream in ms, resumes included; none by default (streams run until the server ends
   * them).
   */
  timeoutMs?: number;
  headers?: HeadersInit;
  /**
   * Resume the subscription when its call fails with UNAVAILABLE or its connection dies (docs/stream-resume.md):
   * re-issue it after a backoff (50 ms doubling to 2 s, +-20% jitter); with several addresses, on the next one
   * when this one does not answer or drains. Default true; false throws the first such error.
   */
  resume?: boolean;
  /** Consecutive re-issued calls without a message before the stream throws the last error. Default 8. */
  maxResumeAttempts?: number;
}

export interface InferStreamCallOptions extends InferStreamRequestOptions {
  /** Aborting it cancels the call; the iteration then throws a VisionRpcError of code Canceled. */
  signal?: AbortSignal;
  /** Deadline of the whole call in ms; none by default (it runs until the frames end). */
  timeoutMs?: number;
  headers?: HeadersInit;
}

/** grpc.health.v1 serving status names. */
export type HealthStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

/** One server address: its own HTTP/2 connection (connect-es binds a transport to one origin) and stubs. */
interface Target {
  readonly session: Http2SessionManager;
  readonly inference: ConnectClient<typeof InferenceService>;
  readonly models: ConnectClient<typeof ModelService>;
  readonly health: ConnectClient<typeof Health>;
}

/**
 * A connection to one visionrpc server (or a load balancer in front of several), or to a list of servers tried
 * in turn. Connects lazily on the first call and reconnects on its own (also after the server's max connection
 * age). Every method rejects with a `VisionRpcError`; bad inputs throw TypeError / RangeError before any RPC.
 *
 * With several addresses, every call goes to the current one. A call that finds its server unavailable (UNAVAILABLE
 * or a dead connection before any response, or a server that says it is shutting down) moves the client on to the
 * next (wrapping around), so a stream resumes there and the caller's retry of a unary call does too. A stream
 * that broke after messages (e.g. a connection recycled by max age) resumes on the same address first, where its
 * pipeline still runs and nothing is lost. Nothing is retried behind the caller's back except stream resumes.
 */
export class VisionRpcClient {
  /** The first address. */
  readonly address: string;
  /** Every address, in the order they are tried. */
  readonly addresses: readonly string[];
  readonly #timeoutMs: number | null;
  readonly #targets: readonly Target[];
  #current = 0;
  #closed = false;

  constructor(address: string | readonly string[] = DEFAULT_ADDRESS, options: ClientOptions = {}) {
    const timeoutMs = options.timeoutMs === undefined ? 30_000 : options.timeoutMs;
    if (timeoutMs !== null && !(timeoutMs > 0)) {
      throw new RangeError(`timeoutMs: expected > 0 or null, got ${timeoutMs}`);
    }
    const maxMessageBytes = options.maxMessageBytes ?? 16 * MIB;
    if (!Number.isInteger(maxMessageBytes) || maxMessageBytes < 1) {
      throw new RangeError(`maxMessageBytes: expected an integer >= 1, got ${maxMessageBytes}`);
    }
    const addresses: readonly string[] = typeof address === "string" ? [address] : [...address];
    if (addresses.length === 0) {
      throw new RangeError("address: expected at least one address, got an empty list");
    }
    this.address = addresses[0] as string;
    this.addresses = Object.freeze(addresses);
    this.#timeoutMs = timeoutMs;
    const keepaliveTimeMs = options.keepaliveTimeMs === undefined ? 30_000 : options.keepaliveTimeMs;
    this.#targets = addresses.map((each) => {
      const baseUrl = baseUrlOf(each, options.tls);
      // Our own session manager: the transport has no close(), the manager's abort() is how close() ends the
      // connection (and every call on it).
      const session = new Http2SessionManager(
        baseUrl,
        {
          ...(keepaliveTimeMs === null
            ? {}
            : {
                pingIntervalMs: keepaliveTimeMs,
                pingTimeoutMs: options.keepaliveTimeoutMs ?? 10_000,
                pingIdleConnection: options.keepaliveWithoutCalls ?? false,
              }),
          ...(options.idleConnectionTimeoutMs === undefined
            ? {}
            : { idleConnectionTimeoutMs: options.idleConnectionTimeoutMs }),
        },
        tlsSessionOptions(options.tls),
      );
      const transport = createGrpcTransport({
        baseUrl,
        sessionManager: session,
        readMaxBytes: maxMessageBytes,
        writeMaxBytes: maxMessageBytes,
        interceptors: [...apiKeyInterceptors(options.apiKey), ...(options.interceptors ?? [])],
      });
      return {
        session,
        inference: createConnectClient(InferenceService, transport),
        models: createConnectClient(ModelService, transport),
        health: createConnectClient(Health, transport),
      };
    });
  }

  // ---------------------------------------------------------------------------------------------- inference

  /**
   * Runs a model on one or more images in one request; `predictions[i]` is image i's.
   *
   * @param images one image or an array: encoded bytes (Uint8Array / Buffer), a file path, or RawPixels.
   * @throws TypeError, RangeError for a wrong image (before any RPC); a file read error for a missing path.
   * @throws VisionRpcError INVALID_ARGUMENT (see `fieldViolations`), NOT_FOUND (unknown model), ...
   */
  async infer(images: ImageInput | readonly ImageInput[], options: InferCallOptions = {}): Promise<InferResponse> {
    this.#checkOpen();
    const request = await buildInferRequest(images, options.model, options);
    return this.#unary((target) => target.inference.infer(request, this.#callOptions(options)), options.signal);
  }

  /**
   * Subscribes to the predictions of a server-side video pipeline. Identical requests share one pipeline on
   * the server; `streamId` joins a running one. The call starts when iteration does. A broken call is
   * resumed unless `resume: false` (see `StreamCallOptions`); each resume yields a "resumed" status.
   *
   * @example
   * for await (const event of client.stream({ sources: ["bikes.mp4"] }, { signal })) { ... }
   */
  stream(request: StreamRequest, options: StreamCallOptions = {}): PredictionStream {
    this.#checkOpen();
    const message = buildStreamRequest(request);
    const headers = withPipelineKey(message, options.headers); // stream affinity: identical requests, one replica
    return new PredictionStream(
      {
        open: (call, signal, timeoutMs) => this.#streamCall(call, signal, timeoutMs, headers),
        isClosed: () => this.#closed,
      },
      message,
      {
        signal: options.signal,
        timeoutMs: options.timeoutMs,
        resume: options.resume,
        maxResumeAttempts: options.maxResumeAttempts,
      },
    );
  }

  /**
   * Infers frames the caller sends on one call (a camera it owns): one result per frame, in the order sent,
   * with the batching, tracking and analytics of a server-side stream. The call starts when iteration does;
   * frames are read from `frames` as the server accepts them (see `inferStream.ts` for back-pressure).
   *
   * @param frames images (as for `infer`), numbered 0, 1, 2, ... on source 0, or `InputFrame`s with their own
   *   numbering, source and timestamp; sync or async iterable.
   * @throws from iteration: VisionRpcError for errors of the call (NOT_FOUND unknown model, INVALID_ARGUMENT bad
   *   options), and the first error the frames iterable or an image's conversion threw, after the answers to the
   *   frames before it. A refused frame is a result with `error`, not a throw.
   *
   * @example
   * for await (const result of client.inferStream(jpegs, { maxInFlight: 4 })) {
   *   console.log(result.sequenceNumber, result.prediction?.detections.map((d) => d.className));
   * }
   */
  async *inferStream(
    frames: Iterable<FrameInput> | AsyncIterable<FrameInput>,
    options: InferStreamCallOptions = {},
  ): AsyncGenerator<FrameResult, void, undefined> {
    this.#checkOpen();
    const requests = new FrameRequests(buildInferStreamConfig(options), frames);
    const call = this.#target(this.#current).inference.inferStream(requests, {
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
      ...(options.headers === undefined ? {} : { headers: options.headers }),
    });
    try {
      for await (const message of call) {
        yield frameResultFromProto(message);
      }
    } catch (err) {
      throw VisionRpcError.from(err);
    }
    if (requests.failure !== undefined) {
      throw requests.failure;
    }
  }

  // ------------------------------------------------------------------------------------------------- models

  /** Every model of the server's repository, built-ins included. */
  async listModels(options: CallOptions = {}): Promise<Model[]> {
    const response = await this.#unary(
      (target) => target.models.listModels({}, this.#callOptions(options)),
      options.signal,
    );
    return response.models;
  }

  /** One model by "name" (newest version) or "name/version"; NOT_FOUND when unknown. */
  async getModel(modelId: string, options: CallOptions = {}): Promise<Model> {
    const response = await this.#unary(
      (target) => target.models.getModel({ modelId }, this.#callOptions(options)),
      options.signal,
    );
    return requireModel(response.model);
  }

  /**
   * Loads and warms a model now rather than on its first request; idempotent. A first load of a built-in may
   * download and convert it: give a generous `timeoutMs` (or null).
   */
  async loadModel(modelId: string, options: CallOptions = {}): Promise<Model> {
    const response = await this.#unary(
      (target) => target.models.loadModel({ modelId }, this.#callOptions(options)),
      options.signal,
    );
    return requireModel(response.model);
  }

  /** Releases a loaded model (it loads again on demand); idempotent. */
  async unloadModel(modelId: string, options: CallOptions = {}): Promise<Model> {
    const response = await this.#unary(
      (target) => target.models.unloadModel({ modelId }, this.#callOptions(options)),
      options.signal,
    );
    return requireModel(response.model);
  }

  // ------------------------------------------------------------------------------------------------- health

  /**
   * The grpc.health.v1 status of `service`. "" is the whole server (liveness);
   * "visionrpc.v1.InferenceService" turns SERVING only once the default model is warm (readiness).
   * Rejects with NOT_FOUND for a service the server does not know.
   */
  async health(service = "", options: CallOptions = {}): Promise<HealthStatus> {
    const response = await this.#unary(
      (target) => target.health.check({ service }, this.#callOptions(options)),
      options.signal,
    );
    return (HealthCheckResponse_ServingStatus[response.status] ?? "UNKNOWN") as HealthStatus;
  }

  // ---------------------------------------------------------------------------------------------- lifecycle

  /** Closes the connections, cancelling calls in flight (streams are not resumed). Idempotent. */
  close(): void {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    for (const target of this.#targets) {
      target.session.abort();
    }
  }

  /** `using client = createClient(...)` (TypeScript 5.2+ explicit resource management). */
  [Symbol.dispose](): void {
    this.close();
  }

  get closed(): boolean {
    return this.#closed;
  }

  // ---------------------------------------------------------------------------------------------- plumbing

  /** Every unary RPC goes through here: one error mapping, one address choice. */
  async #unary<T>(call: (target: Target) => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    this.#checkOpen();
    const index = this.#current;
    try {
      return await call(this.#target(index));
    } catch (err) {
      const error = VisionRpcError.from(err);
      this.#failed(index, error, signal);
      throw error;
    }
  }

  /** One call of a stream subscription, on the current address; PredictionStream resumes across them. */
  async *#streamCall(
    request: StreamPredictionsRequest,
    signal: AbortSignal,
    timeoutMs: number | undefined,
    headers: HeadersInit | undefined,
  ): AsyncGenerator<StreamPredictionsResponse, void, undefined> {
    this.#checkOpen();
    const index = this.#current;
    const call = this.#target(index).inference.streamPredictions(request, {
      signal,
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
      ...(headers === undefined ? {} : { headers }),
    });
    let answered = false;
    try {
      for await (const message of call) {
        answered = true;
        yield message;
      }
    } catch (err) {
      const error = VisionRpcError.from(err);
      // A server that answered and then lost the connection (recycled by max age, a proxy restart) most likely
      // still runs the stream: resume there, where it is replayed. One that did not answer, or says it drains,
      // is skipped.
      if (!answered || error.reason === SHUTTING_DOWN) {
        this.#failed(index, error, signal);
      }
      throw err;
    }
  }

  #target(index: number): Target {
    return this.#targets[index] as Target;
  }

  /**
   * A call on address `index` found its server unavailable: when the failure is UNAVAILABLE or a dead connection
   * (and not the caller's abort), later calls go to the next address. Only the first of several calls failing
   * on the same address moves it, so concurrent failures do not skip an address.
   */
  #failed(index: number, error: VisionRpcError, signal: AbortSignal | undefined): void {
    if (signal?.aborted !== true && !this.#closed && isResumable(error) && this.#current === index) {
      this.#current = (index + 1) % this.#targets.length;
    }
  }

  /** One deadline rule: the call's own, else the client's; null means none. */
  #callOptions(options: CallOptions): { timeoutMs?: number; signal?: AbortSignal; headers?: HeadersInit } {
    const timeoutMs = options.timeoutMs === undefined ? this.#timeoutMs : options.timeoutMs;
    return {
      ...(timeoutMs === null ? {} : { timeoutMs }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      ...(options.headers === undefined ? {} : { headers: options.headers }),
    };
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new Error("the client is closed");
    }
  }
}

/**
 * Creates a client for `address`: "host:port", "[::1]:50051", or a URL ("http://host:port",
 * "https://host:port"); or for a list of them, tried in turn when one is unavailable (e.g. the replicas of a
 * deployment, so that a stream resumes on another when one drains). Nothing connects until the first call.
 */
export function createClient(
  address: string | readonly string[] = DEFAULT_ADDRESS,
  options: ClientOptions = {},
): VisionRpcClient {
  return new VisionRpcClient(address, options);
}

function baseUrlOf(address: string, tls: ClientOptions["tls"]): string {
  const secure = tls !== undefined && tls !== false;
  const match = /^(https?):\/\//.exec(address);
  if (match !== null) {
    if (match[1] === "http" && secure) {
      throw new TypeError(`address: expected https:// (or host:port) with tls, got ${address}`);
    }
    return address;
  }
  if (address.includes("/")) {
    throw new TypeError(`address: expected "host:port" or an http(s) URL, got ${address}`);
  }
  return `${secure ? "https" : "http"}://${address}`;
}

function tlsSessionOptions(tls: ClientOptions["tls"]): Record<string, unknown> {
  if (tls === undefined || typeof tls === "boolean") {
    return {};
  }
  const options: Record<string, unknown> = {};
  for (const key of ["ca", "cert", "key", "servername"] as const) {
    if (tls[key] !== undefined) {
      options[key] = tls[key];
    }
  }
  return options;
}

function requireModel(model: Model | undefined): Model {
  if (model === undefined) {
    // The contract always sets it; a server that does not is broken, not "no model".
    throw new VisionRpcError(new ConnectError("the server sent no model in its response", Code.Internal));
  }
  return model;
}

/** An interceptor adding the API key to every call, or none without a key. */
function apiKeyInterceptors(apiKey: string | undefined): Interceptor[] {
  if (apiKey === undefined) {
    return [];
  }
  const key = apiKey.trim();
  if (key === "") {
    throw new RangeError("apiKey: expected a non-empty key");
  }
  return [
    (next) => async (request) => {
      request.header.set("authorization", `Bearer ${key}`);
      return await next(request);
    },
  ];
}
