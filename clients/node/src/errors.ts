/**
 * The one error type of the Node client: every failed RPC rejects (or throws from a stream) with a
 * `VisionRpcError`, a `ConnectError` with the server's rich details decoded.
 *
 *     ConnectError                 @connectrpc/connect: code (Code enum), rawMessage, metadata (headers + trailers),
 *     └── VisionRpcError           details (google.protobuf.Any), findDetails()
 *                                  + codeName ("INVALID_ARGUMENT"), reason, domain, errorInfoMetadata,
 *                                    fieldViolations, retryDelayMs, retryable
 *
 * The details come from the `grpc-status-details-bin` trailer, a google.rpc.Status that the gRPC transport
 * already splits into `details`: ErrorInfo gives `reason`, `domain` and `errorInfoMetadata`, BadRequest gives
 * `fieldViolations`, RetryInfo gives `retryDelayMs`. Mirrors the Python client's `VisionRpcError`.
 *
 * @example
 * try {
 *   await client.infer([new TextEncoder().encode("not an image")]);
 * } catch (err) {
 *   if (err instanceof VisionRpcError && err.code === Code.InvalidArgument) {
 *     console.log(err.reason, err.fieldViolations.map((v) => v.field));
 *   }
 * }
 */

import { Code, ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

/** One bad request field, named by its path in the request (e.g. "images[2].raw.width"). */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** gRPC's canonical status names (the ones cases.json and the other clients use), by code. */
const CODE_NAMES: Readonly<Record<Code, string>> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** The canonical gRPC name of a status code: `codeName(Code.Canceled) === "CANCELLED"`. */
export function codeName(code: Code): string {
  return CODE_NAMES[code] ?? `CODE_${String(code)}`;
}

/**
 * A failed RPC with the server's rich error details decoded.
 *
 * `message` keeps ConnectError's "[code] text" form; `rawMessage` is the server's status message as sent.
 * `metadata` stays ConnectError's response headers and trailers; ErrorInfo's metadata is `errorInfoMetadata`.
 *
 * `err instanceof ConnectError` holds (so `ConnectError.from(err)` returns it unchanged), which is why `name`
 * stays "ConnectError": connect-es recognises its errors across package copies by that name.
 */
export class VisionRpcError extends ConnectError {
  /** The canonical gRPC status name, e.g. "INVALID_ARGUMENT", "CANCELLED". */
  readonly codeName: string;
  /** google.rpc.ErrorInfo.reason: an UPPER_SNAKE machine-readable cause ("" when absent). */
  readonly reason: string;
  /** google.rpc.ErrorInfo.domain, "visionrpc.dev" for the server's own errors ("" when absent). */
  readonly domain: string;
  /** google.rpc.ErrorInfo.metadata. */
  readonly errorInfoMetadata: Readonly<Record<string, string>>;
  /** google.rpc.BadRequest field violations, in server order. */
  readonly fieldViolations: readonly FieldViolation[];
  /** google.rpc.RetryInfo.retry_delay in milliseconds; undefined when the server sent none. */
  readonly retryDelayMs: number | undefined;

  /**
   * Wraps a ConnectError (or anything thrown by a call) and decodes its details. Prefer `VisionRpcError.from`.
   */
  constructor(cause: ConnectError) {
    const consistent = detailsMatchGrpcStatus(cause);
    const code = consistent ? cause.code : grpcStatusCode(cause);
    const rawMessage = consistent ? cause.rawMessage : grpcStatusMessage(cause);
    super(rawMessage, code, cause.metadata, undefined, cause.cause ?? cause);
    // Keep the incoming details (not outgoing ones) so that findDetails() works on this error too.
    this.details = consistent ? cause.details : [];
    if (cause.stack !== undefined) {
      this.stack = cause.stack;
    }
    this.codeName = codeName(code);
    const info = this.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason ?? "";
    this.domain = info?.domain ?? "";
    this.errorInfoMetadata = Object.freeze({ ...(info?.metadata ?? {}) });
    this.fieldViolations = Object.freeze(
      this.findDetails(BadRequestSchema).flatMap((badRequest) =>
        badRequest.fieldViolations.map((v) => Object.freeze({ field: v.field, description: v.description })),
      ),
    );
    const retry = this.findDetails(RetryInfoSchema)[0]?.retryDelay;
    this.retryDelayMs = retry === undefined ? undefined : Number(retry.seconds) * 1000 + Math.round(retry.nanos / 1e6);
  }

  /** Converts anything a call threw into a VisionRpcError (returned unchanged when it already is one). */
  static override from(reason: unknown, code: Code = Code.Unknown): VisionRpcError {
    if (reason instanceof VisionRpcError) {
      return reason;
    }
    return new VisionRpcError(ConnectError.from(reason, code));
  }

  /**
   * ConnectError's own `instanceof` accepts any ConnectError-shaped value; subclasses need the prototype chain,
   * or every ConnectError would pass `instanceof VisionRpcError`.
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }

  /** True only for UNAVAILABLE: the contract makes it the one status that is safe to retry blindly. */
  get retryable(): boolean {
    return this.code === Code.Unavailable;
  }

  /** "INVALID_ARGUMENT: text [REASON]" plus one line per field violation. */
  override toString(): string {
    let text = this.rawMessage ? `${this.codeName}: ${this.rawMessage}` : this.codeName;
    if (this.reason) {
      text += ` [${this.reason}]`;
    }
    for (const violation of this.fieldViolations) {
      text += `\n  ${violation.field || "<request>"}: ${violation.description}`;
    }
    return text;
  }
}

/**
 * connect-es takes code and message from the google.rpc.Status in grpc-status-details-bin when there is one.
 * A proxy that rewrote the status (or a corrupt trailer) leaves a Status that describes another error: then the
 * details are dropped rather than misattributed, and grpc-status / grpc-message win (as in the Python client).
 */
function detailsMatchGrpcStatus(err: ConnectError): boolean {
  const header = err.metadata.get("grpc-status");
  if (header === null || err.details.length === 0 || !err.metadata.has("grpc-status-details-bin")) {
    return true;
  }
  return Number.parseInt(header, 10) === err.code;
}

function grpcStatusCode(err: ConnectError): Code {
  const code = Number.parseInt(err.metadata.get("grpc-status") ?? "", 10);
  return code in Code ? (code as Code) : Code.Unknown;
}

function grpcStatusMessage(err: ConnectError): string {
  const message = err.metadata.get("grpc-message") ?? "";
  try {
    return decodeURIComponent(message);
  } catch {
    return message;
  }
}

/**
 * The VisionRpcError of a google.rpc.Status carried inside a message (InferStream's per-frame errors), with
 * its details decoded as for a failed call.
 */
export function errorFromStatus(status: Status): VisionRpcError {
  const code = status.code in Code ? (status.code as Code) : Code.Unknown;
  const error = new ConnectError(status.message, code);
  // Incoming details as connect-es keeps them: the type name (the Any's URL after its last "/") and the bytes.
  error.details = status.details.map((any) => ({
    type: any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1),
    value: any.value,
  }));
  return new VisionRpcError(error);
}
