/**
 * The stream affinity key: a deterministic hash of what decides a server-side pipeline, sent as the
 * `x-visionrpc-pipeline-key` header of StreamPredictions. A proxy hashing on it (nginx
 * `hash $http_x_visionrpc_pipeline_key consistent`, an Istio DestinationRule's consistentHash) sends identical
 * subscriptions to one replica, where they share one pipeline (docs/deploying.md).
 *
 * Every SDK builds the same text and hash: clients/python/_pipeline_key.py describes it,
 * tests/mesh/pipeline_key_cases.json checks it.
 */

import { createHash } from "node:crypto";

import { FrameImage, type StreamPredictionsRequest, type VideoSource } from "./gen/visionrpc/v1/inference_pb.js";

export const PIPELINE_KEY_HEADER = "x-visionrpc-pipeline-key";

/** Request headers in any form `new Headers()` accepts (client.ts's HeadersInit). */
type Headerish = Headers | Record<string, string> | [string, string][];

/** The request's affinity key, or undefined for a join by stream id (the server ignores the rest of it). */
export function pipelineKey(request: StreamPredictionsRequest): string | undefined {
  if (request.streamId !== "") {
    return undefined;
  }
  return createHash("sha256").update(canonicalPipelineText(request), "utf8").digest("hex").slice(0, 32);
}

/** `headers` plus the request's key (a copy; the caller's headers are left as they are). */
export function withPipelineKey(
  request: StreamPredictionsRequest,
  headers: Headerish | undefined,
): Headerish | undefined {
  const key = pipelineKey(request);
  if (key === undefined) {
    return headers;
  }
  const merged = new Headers(headers);
  merged.set(PIPELINE_KEY_HEADER, key);
  return merged;
}

/** The text the key hashes; exported for the cross-language cases. */
export function canonicalPipelineText(request: StreamPredictionsRequest): string {
  const options = request.options;
  const stream = request.streamOptions;
  const ids = [...new Set(options?.classIds ?? [])].sort((a, b) => a - b);
  const names = [...new Set(options?.classNames ?? [])].sort((a, b) => Buffer.compare(utf8(a), utf8(b)));
  const maxFps = stream?.maxFps === 0 ? undefined : stream?.maxFps;
  const frameImage = stream?.frameImage || FrameImage.NONE; // UNSPECIFIED (0) reads as NONE
  const lines = [
    "visionrpc-pipeline-key/v1",
    `model=${lengthPrefixed(request.modelId)}`,
    ...request.sources.map((source) => `source=${sourceText(source)}`),
    `confidence=${floatText(options?.confidenceThreshold)}`,
    `iou=${floatText(options?.iouThreshold)}`,
    `max_detections=${options?.maxDetections ?? ""}`,
    `top_k=${options?.topK ?? ""}`,
    `class_ids=${ids.join(",")}`,
    `class_names=${names.map(lengthPrefixed).join(",")}`,
    `max_fps=${floatText(maxFps)}`,
    `frame_policy=${stream?.framePolicy ?? 0}`,
    `frame_image=${frameImage}`,
    `jpeg_quality=${stream?.jpegQuality || ""}`,
  ];
  return lines.join("\n") + "\n";
}

function sourceText(source: VideoSource): string {
  switch (source.source.case) {
    case "path":
      return `path:${lengthPrefixed(source.source.value)}`;
    case "url":
      return `url:${lengthPrefixed(source.source.value)}`;
    case "device":
      return `device:${source.source.value}`;
    default:
      return "none:";
  }
}

function utf8(text: string): Buffer {
  return Buffer.from(text, "utf8");
}

function lengthPrefixed(text: string): string {
  return `${utf8(text).length}:${text}`;
}

/** The float32's IEEE-754 bits in hex (float32 is what travels), "" when unset. */
function floatText(value: number | undefined): string {
  if (value === undefined) {
    return "";
  }
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, value);
  return view.getUint32(0).toString(16).padStart(8, "0");
}
