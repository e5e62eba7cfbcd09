/**
 * The client: one HTTP/2 connection (connect-es's gRPC transport), typed methods, errors as `VisionRpcError`.
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
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { InferenceService, type InferResponse } from "./gen/visionrpc/v1/inference_pb.js";
import { ModelService, type Model } from "./gen/visionrpc/v1/models_pb.js";
import { PredictionStream } from "./stream.js";

export const DEFAULT_ADDRESS = "127.0.0.1:50051";
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
  /** Deadline of the whole stream in ms; none by default (streams run until the server ends them). */
  timeoutMs?: number;
  headers?: HeadersInit;
}

/** grpc.health.v1 serving status names. */
export type HealthStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

/**
 * A connection to one visionrpc server (or a load balancer in front of several). Connects lazily on the first
 * call and reconnects on its own (also after the server's max connection age). Every method rejects with a
 * `VisionRpcError`; bad inputs throw TypeError / RangeError before any RPC.
 */
export class VisionRpcClient {
  readonly address: string;
  readonly #timeoutMs: number | null;
  readonly #session: Http2SessionManager;
  readonly #inference: ConnectClient<typeof InferenceService>;
  readonly #models: ConnectClient<typeof ModelService>;
  readonly #health: ConnectClient<typeof Health>;
  #closed = false;

  constructor(address: string = DEFAULT_ADDRESS, options: ClientOptions = {}) {
    const timeoutMs = options.timeoutMs === undefined ? 30_000 : options.timeoutMs;
    if (timeoutMs !== null && !(timeoutMs > 0)) {
      throw new RangeError(`timeoutMs: expected > 0 or null, got ${timeoutMs}`);
    }
    const maxMessageBytes = options.maxMessageBytes ?? 16 * MIB;
    if (!Number.isInteger(maxMessageBytes) || maxMessageBytes < 1) {
      throw new RangeError(`maxMessageBytes: expected an integer >= 1, got ${maxMessageBytes}`);
    }
    this.address = address;
    this.#timeoutMs = timeoutMs;
    const baseUrl = baseUrlOf(address, options.tls);
    const keepaliveTimeMs = options.keepaliveTimeMs === undefined ? 30_000 : options.keepaliveTimeMs;
    // Our own session manager: the transport has no close(), the manager's abort() is how close() ends the
    // connection (and every call on it).
    this.#session = new Http2SessionManager(
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
      sessionManager: this.#session,
      readMaxBytes: maxMessageBytes,
      writeMaxBytes: maxMessageBytes,
      interceptors: options.interceptors ?? [],
    });
    this.#inference = createConnectClient(InferenceService, transport);
    this.#models = createConnectClient(ModelService, transport);
    this.#health = createConnectClient(Health, transport);
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
    return this.#unary(() => this.#inference.infer(request, this.#callOptions(options)));
  }

  /**
   * Subscribes to the predictions of a server-side video pipeline. Identical requests share one pipeline on
   * the server; `streamId` joins a running one. The call starts when iteration does.
   *
   * @example
   * for await (const event of client.stream({ sources: ["bikes.mp4"] }, { signal })) { ... }
   */
  stream(request: StreamRequest, options: StreamCallOptions = {}): PredictionStream {
    this.#checkOpen();
    const message = buildStreamRequest(request);
    return new PredictionStream(
      (signal) =>
        this.#inference.streamPredictions(message, {
          signal,
          ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
          ...(options.headers === undefined ? {} : { headers: options.headers }),
        }),
      options.signal,
    );
  }

  // ------------------------------------------------------------------------------------------------- models

  /** Every model of the server's repository, built-ins included. */
  async listModels(options: CallOptions = {}): Promise<Model[]> {
    const response = await this.#unary(() => this.#models.listModels({}, this.#callOptions(options)));
    return response.models;
  }

  /** One model by "name" (newest version) or "name/version"; NOT_FOUND when unknown. */
  async getModel(modelId: string, options: CallOptions = {}): Promise<Model> {
    const response = await this.#unary(() => this.#models.getModel({ modelId }, this.#callOptions(options)));
    return requireModel(response.model);
  }

  /**
   * Loads and warms a model now rather than on its first request; idempotent. A first load of a built-in may
   * download and convert it: give a generous `timeoutMs` (or null).
   */
  async loadModel(modelId: string, options: CallOptions = {}): Promise<Model> {
    const response = await this.#unary(() => this.#models.loadModel({ modelId }, this.#callOptions(options)));
    return requireModel(response.model);
  }

  /** Releases a loaded model (it loads again on demand); idempotent. */
  async unloadModel(modelId: string, options: CallOptions = {}): Promise<Model> {
    const response = await this.#unary(() => this.#models.unloadModel({ modelId }, this.#callOptions(options)));
    return requireModel(response.model);
  }

  // ------------------------------------------------------------------------------------------------- health

  /**
   * The grpc.health.v1 status of `service`. "" is the whole server (liveness);
   * "visionrpc.v1.InferenceService" turns SERVING only once the default model is warm (readiness).
   * Rejects with NOT_FOUND for a service the server does not know.
   */
  async health(service = "", options: CallOptions = {}): Promise<HealthStatus> {
    const response = await this.#unary(() => this.#health.check({ service }, this.#callOptions(options)));
    return (HealthCheckResponse_ServingStatus[response.status] ?? "UNKNOWN") as HealthStatus;
  }

  // ---------------------------------------------------------------------------------------------- lifecycle

  /** Closes the connection, cancelling calls in flight. Idempotent. */
  close(): void {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    this.#session.abort();
  }

  /** `using client = createClient(...)` (TypeScript 5.2+ explicit resource management). */
  [Symbol.dispose](): void {
    this.close();
  }

  get closed(): boolean {
    return this.#closed;
  }

  // ---------------------------------------------------------------------------------------------- plumbing

  /** Every unary RPC goes through here: one error mapping. */
  async #unary<T>(call: () => Promise<T>): Promise<T> {
    this.#checkOpen();
    try {
      return await call();
    } catch (err) {
      throw VisionRpcError.from(err);
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
 * "https://host:port"). Nothing connects until the first call.
 */
export function createClient(address: string = DEFAULT_ADDRESS, options: ClientOptions = {}): VisionRpcClient {
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
