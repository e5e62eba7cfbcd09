// Error decoding without a server: statuses built the way grpcio-status sends them (a google.rpc.Status in
// grpc-status-details-bin), parsed by connect-es's own gRPC trailer code, then wrapped as VisionRpcError.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { create, toBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";

import { VisionRpcError, codeName } from "../src/index.js";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";

function pack<Desc extends DescMessage>(schema: Desc, init: MessageInitShape<Desc>) {
  return anyPack(schema, create(schema, init));
}

/** Trailers as a grpcio server sends them for a failed call with rich details. */
function trailers(code: Code, message: string, details: ReturnType<typeof pack>[], grpcStatus = code): Headers {
  const status = create(StatusSchema, { code, message, details });
  return new Headers({
    "grpc-status": String(grpcStatus),
    "grpc-message": encodeURIComponent(message),
    "grpc-status-details-bin": Buffer.from(toBinary(StatusSchema, status)).toString("base64").replace(/=+$/, ""),
  });
}

function fromTrailers(headers: Headers): VisionRpcError {
  const err = findTrailerError(headers);
  assert.ok(err instanceof ConnectError, "expected connect-es to find an error in the trailers");
  return VisionRpcError.from(err);
}

describe("VisionRpcError", () => {
  test("decodes ErrorInfo and BadRequest field violations", () => {
    const err = fromTrailers(
      trailers(Code.InvalidArgument, "bad image", [
        pack(ErrorInfoSchema, { reason: "UNDECODABLE_IMAGE", domain: "visionrpc.dev", metadata: { index: "2" } }),
        pack(BadRequestSchema, {
          fieldViolations: [
            { field: "images[2].encoded", description: "not an image" },
            { field: "options.iou_threshold", description: "expected [0, 1], got 2" },
          ],
        }),
      ]),
    );
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.codeName, "INVALID_ARGUMENT");
    assert.equal(err.rawMessage, "bad image");
    assert.equal(err.message, "[invalid_argument] bad image");
    assert.equal(err.reason, "UNDECODABLE_IMAGE");
    assert.equal(err.domain, "visionrpc.dev");
    assert.deepEqual(err.errorInfoMetadata, { index: "2" });
    assert.deepEqual(err.fieldViolations, [
      { field: "images[2].encoded", description: "not an image" },
      { field: "options.iou_threshold", description: "expected [0, 1], got 2" },
    ]);
    assert.equal(err.retryDelayMs, undefined);
    assert.equal(err.retryable, false);
    assert.equal(
      err.toString(),
      "INVALID_ARGUMENT: bad image [UNDECODABLE_IMAGE]\n  images[2].encoded: not an image\n" +
        "  options.iou_threshold: expected [0, 1], got 2",
    );
    // The details stay reachable through connect-es's own API too.
    assert.equal(err.findDetails(ErrorInfoSchema)[0]?.reason, "UNDECODABLE_IMAGE");
    assert.equal(err.metadata.get("grpc-status"), String(Code.InvalidArgument));
  });

  test("decodes RetryInfo into retryDelayMs", () => {
    const err = fromTrailers(
      trailers(Code.ResourceExhausted, "too many streams", [
        pack(ErrorInfoSchema, { reason: "TOO_MANY_PIPELINES", domain: "visionrpc.dev" }),
        pack(RetryInfoSchema, { retryDelay: { seconds: 1n, nanos: 500_000_000 } }),
      ]),
    );
    assert.equal(err.codeName, "RESOURCE_EXHAUSTED");
    assert.equal(err.retryDelayMs, 1500);
    assert.equal(err.reason, "TOO_MANY_PIPELINES");
  });

  test("a status without details has empty rich fields", () => {
    const err = fromTrailers(new Headers({ "grpc-status": String(Code.Unavailable), "grpc-message": "draining" }));
    assert.equal(err.codeName, "UNAVAILABLE");
    assert.equal(err.rawMessage, "draining");
    assert.equal(err.reason, "");
    assert.equal(err.domain, "");
    assert.deepEqual(err.errorInfoMetadata, {});
    assert.deepEqual(err.fieldViolations, []);
    assert.equal(err.retryable, true);
  });

  test("details that contradict grpc-status (a proxy rewrote the status) are dropped", () => {
    const err = fromTrailers(
      trailers(
        Code.InvalidArgument,
        "bad image",
        [pack(ErrorInfoSchema, { reason: "UNDECODABLE_IMAGE" })],
        Code.Unavailable,
      ),
    );
    assert.equal(err.code, Code.Unavailable);
    assert.equal(err.codeName, "UNAVAILABLE");
    assert.equal(err.rawMessage, "bad image"); // grpc-message
    assert.equal(err.reason, "");
    assert.deepEqual(err.details, []);
  });

  test("undecodable detail payloads are skipped, not thrown", () => {
    const err = new ConnectError("boom", Code.Internal);
    err.details = [{ type: "google.rpc.ErrorInfo", value: new Uint8Array([0xff, 0xff, 0xff]) }];
    const wrapped = VisionRpcError.from(err);
    assert.equal(wrapped.reason, "");
    assert.equal(wrapped.codeName, "INTERNAL");
  });

  test("instanceof: a VisionRpcError is a ConnectError, a plain ConnectError is not a VisionRpcError", () => {
    const plain = new ConnectError("x", Code.NotFound);
    const wrapped = VisionRpcError.from(plain);
    assert.ok(wrapped instanceof VisionRpcError);
    assert.ok(wrapped instanceof ConnectError);
    assert.ok(wrapped instanceof Error);
    assert.ok(!(plain instanceof VisionRpcError));
    assert.equal(ConnectError.from(wrapped), wrapped, "connect-es must recognise it and pass it through");
    assert.equal(VisionRpcError.from(wrapped), wrapped);
    assert.equal(wrapped.cause, plain);
  });

  test("anything thrown becomes a VisionRpcError", () => {
    const abort = VisionRpcError.from(new DOMException("stop", "AbortError"));
    assert.equal(abort.codeName, "CANCELLED");
    const other = VisionRpcError.from(new TypeError("nope"));
    assert.equal(other.codeName, "UNKNOWN");
    assert.equal(other.rawMessage, "nope");
  });

  test("codeName uses gRPC's canonical names", () => {
    assert.equal(codeName(Code.Canceled), "CANCELLED");
    assert.equal(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
    assert.equal(codeName(Code.Unauthenticated), "UNAUTHENTICATED");
  });
});
