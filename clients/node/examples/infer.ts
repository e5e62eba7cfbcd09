// Runs the server's default model on image files and prints the detections; optionally follows a video stream.
//
//   npm run build
//   node dist/examples/infer.js coffee.png motorcycle_left.png          # server at $VISIONRPC_ADDRESS or 127.0.0.1:50051
//   node dist/examples/infer.js --stream clips/bikes.mp4                # a file below the server's --media-root
//
// Ctrl-C during a stream cancels it (the AbortSignal reaches the server as a gRPC cancellation).

import { Code, VisionRpcError, createClient } from "../src/index.js";

const args = process.argv.slice(2);
const client = createClient(process.env["VISIONRPC_ADDRESS"] ?? "127.0.0.1:50051", { timeoutMs: 30_000 });

try {
  console.log("readiness:", await client.health("visionrpc.v1.InferenceService"));
  if (args[0] === "--stream" && args[1] !== undefined) {
    const controller = new AbortController();
    process.once("SIGINT", () => controller.abort());
    for await (const event of client.stream({ sources: [args[1]], maxFps: 10 }, { signal: controller.signal })) {
      if (event.kind === "status") {
        console.log(
          `[${event.event}]`,
          event.reason || event.sources.map((s) => `${s.width}x${s.height}@${s.fps}`).join(" "),
        );
      } else if (event.kind === "frame") {
        const names = event.prediction?.detections.map((d) => d.className) ?? [];
        console.log(`frame ${event.sequenceNumber}: ${names.join(", ") || "-"}`);
      }
    }
  } else {
    const result = await client.infer(args.length > 0 ? args : ["coffee.png"], { confidence: 0.4 });
    console.log(`${result.modelName}/${result.modelVersion} on ${result.engine?.provider ?? "?"}`);
    result.predictions.forEach((prediction, i) => {
      console.log(`${args[i] ?? "coffee.png"} (${prediction.imageSize?.width}x${prediction.imageSize?.height}):`);
      for (const d of prediction.detections) {
        const box = d.box === undefined ? [] : [d.box.xMin, d.box.yMin, d.box.xMax, d.box.yMax].map(Math.round);
        console.log(`  ${d.className.padEnd(12)} ${d.confidence.toFixed(2)}  [${box.join(", ")}]`);
      }
    });
  }
} catch (err) {
  if (err instanceof VisionRpcError) {
    // e.g. INVALID_ARGUMENT: expected a JPEG, PNG, ... [UNSUPPORTED_IMAGE_FORMAT]\n  images[0].encoded: ...
    console.error(err.toString());
    process.exitCode = err.code === Code.Unavailable ? 75 : 1;
  } else {
    throw err;
  }
} finally {
  client.close();
}
