/**
 * @visionrpc/client — the Node.js client of the visionrpc inference server.
 *
 * The hand-written surface is small: `createClient` / `VisionRpcClient`, `PredictionStream` (resuming broken
 * subscriptions), `VisionRpcError` and the input/event types. Results are the generated protobuf-es messages (`InferResponse`, `Model`, ...),
 * re-exported here as types; the whole generated contract is under `./gen/` for anything else.
 */

export {
  DEFAULT_ADDRESS,
  VisionRpcClient,
  createClient,
  type CallOptions,
  type ClientOptions,
  type HeadersInit,
  type HealthStatus,
  type InferCallOptions,
  type InferStreamCallOptions,
  type StreamCallOptions,
  type TlsOptions,
} from "./client.js";
export type {
  ChannelOrderName,
  ImageInput,
  InferOptions,
  RawPixels,
  ResumeInfo,
  ResumeOutcomeName,
  SourceInfo,
  StreamEventName,
  StreamEvents,
  StreamFrame,
  StreamMessage,
  StreamRequest,
  StreamStatus,
} from "./convert.js";
export { VisionRpcError, codeName, errorFromStatus, type FieldViolation } from "./errors.js";
export type { FrameInput, FrameResult, InferStreamRequestOptions, InputFrame } from "./inferStream.js";
export { maskArea, maskRows } from "./mask.js";
export { PIPELINE_KEY_HEADER, pipelineKey } from "./pipelineKey.js";
export { PredictionStream, type PredictionStreamConfig, type StreamCalls } from "./stream.js";
export { Code, ConnectError } from "@connectrpc/connect";
export type {
  EngineInfo,
  Detection,
  Classification,
  BoundingBox,
  Keypoint,
  Mask,
  ImagePrediction,
  ImageSize,
  Timings,
} from "./gen/visionrpc/v1/types_pb.js";
export type { InferResponse, InferStreamResponse, StreamPredictionsResponse } from "./gen/visionrpc/v1/inference_pb.js";
export { Backpressure } from "./gen/visionrpc/v1/inference_pb.js";
export type {
  AnalyticsEvent,
  FrameAnalytics,
  LineState,
  StreamAnalytics,
  ZoneState,
} from "./gen/visionrpc/v1/analytics_pb.js";
export { AnalyticsEventKind, CrossingDirection } from "./gen/visionrpc/v1/analytics_pb.js";
export {
  ModelState,
  ModelTask,
  type Model,
  type ModelDefaults,
  type ModelInput,
} from "./gen/visionrpc/v1/models_pb.js";
