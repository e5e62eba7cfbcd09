// The client against a real grpcio server beyond the conformance cases: health, models, raw pixels, deadlines,
// cancellation of unary calls and of streams (leaving `for await`), several addresses. Run through the harness
// (scripts/test-node).

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, test } from "node:test";

import { Code, ModelState, VisionRpcError, createClient } from "../src/index.js";
import { deadAddress, serverFromEnvironment, sleep } from "./support.js";

const server = serverFromEnvironment("client");

if (server !== undefined) {
  const client = createClient(server.address, { timeoutMs: 120_000 });
  after(() => client.close());
  const coffee = join(server.media, "coffee.png");

  describe("health", () => {
    test("liveness and readiness", async () => {
      assert.equal(await client.health(), "SERVING");
      assert.equal(await client.health("visionrpc.v1.InferenceService"), "SERVING");
    });

    test("an unknown service is NOT_FOUND", async () => {
      await assert.rejects(client.health("no.such.Service"), (err: unknown) => {
        assert.ok(err instanceof VisionRpcError);
        assert.equal(err.code, Code.NotFound);
        return true;
      });
    });
  });

  describe("api key", () => {
    test("travels as a Bearer token on every call", async () => {
      const seen: (string | null)[] = [];
      const keyed = createClient(server.address, {
        apiKey: " key-123 ",
        interceptors: [
          (next) => async (request) => {
            seen.push(request.header.get("authorization"));
            return await next(request);
          },
        ],
      });
      try {
        assert.equal(await keyed.health(), "SERVING");
      } finally {
        keyed.close();
      }
      assert.deepEqual(seen, ["Bearer key-123"]);
    });

    test("an empty key is refused before any call", () => {
      assert.throws(() => createClient(server.address, { apiKey: " " }), RangeError);
    });
  });

  describe("models", () => {
    test("list, get, load, unload", async () => {
      const models = await client.listModels();
      const names = models.map((m) => m.name);
      assert.ok(names.includes("yolov3-tiny-coco") && names.includes("centerface"), names.join(", "));

      const yolo = await client.getModel("yolov3-tiny-coco");
      assert.equal(yolo.classNames.length, 80);
      assert.equal(yolo.classNames[41], "cup");
      assert.equal(yolo.input?.width, 416);

      const loaded = await client.loadModel("centerface");
      assert.equal(loaded.state, ModelState.READY);
      const unloaded = await client.unloadModel("centerface");
      assert.notEqual(unloaded.state, ModelState.READY);
    });

    test("an unknown model is NOT_FOUND with ErrorInfo", async () => {
      await assert.rejects(client.getModel("no-such-model"), (err: unknown) => {
        assert.ok(err instanceof VisionRpcError);
        assert.equal(err.codeName, "NOT_FOUND");
        assert.equal(err.reason, "MODEL_NOT_FOUND");
        assert.equal(err.domain, "visionrpc.dev");
        return true;
      });
    });
  });

  describe("infer", () => {
    test("raw pixels skip decoding; class ids filter", async () => {
      const width = 64;
      const height = 48;
      const data = new Uint8Array(width * height * 3).fill(127);
      const response = await client.infer({ data, width, height, channelOrder: "rgb" }, { classes: [41] });
      assert.deepEqual(
        [response.predictions[0]?.imageSize?.width, response.predictions[0]?.imageSize?.height],
        [64, 48],
      );
      assert.ok(response.predictions[0]?.detections.every((d) => d.classId === 41));
      assert.ok((response.predictions[0]?.timings?.totalMs ?? 0) > 0);
    });

    test("an option out of range is INVALID_ARGUMENT naming the field", async () => {
      const err = await client
        .infer({ data: new Uint8Array(4), width: 2, height: 2, channelOrder: "gray" }, { iou: 7 })
        .catch((e: unknown) => e);
      assert.ok(err instanceof VisionRpcError);
      assert.equal(err.codeName, "INVALID_ARGUMENT");
      assert.equal(err.fieldViolations[0]?.field, "options.iou_threshold");
    });

    test("a deadline that passes is DEADLINE_EXCEEDED", async () => {
      const err = await client.infer(coffee, { timeoutMs: 1 }).catch((e: unknown) => e);
      assert.ok(err instanceof VisionRpcError, String(err));
      assert.equal(err.codeName, "DEADLINE_EXCEEDED");
    });

    test("aborting a unary call rejects with CANCELLED", async () => {
      const controller = new AbortController();
      const call = client.infer(coffee, { signal: controller.signal });
      controller.abort();
      const err = await call.catch((e: unknown) => e);
      assert.ok(err instanceof VisionRpcError, String(err));
      assert.equal(err.codeName, "CANCELLED");
    });
  });

  describe("streams", () => {
    // Requests differ from the conformance cases' (max_fps): identical requests would share one pipeline.
    test("leaving `for await` cancels the call on the server", { timeout: 60_000 }, async () => {
      const stream = client.stream({ sources: ["bikes.mp4"], maxFps: 9 });
      let streamId = "";
      let frames = 0;
      for await (const event of stream) {
        streamId = event.streamId;
        if (event.kind === "frame" && ++frames === 2) {
          break;
        }
      }
      assert.ok(stream.cancelled);
      // After the pipeline's 2 s linger with no subscriber it stops, and joining it is NOT_FOUND; a subscription
      // left open by the break would keep it running (connect-es alone leaves it open).
      await sleep(4_000);
      const err = await (async () => {
        for await (const event of client.stream({ streamId })) {
          return new Error(`still running (got a ${event.kind})`);
        }
        return new Error("ended without NOT_FOUND");
      })().catch((e: unknown) => e);
      assert.ok(err instanceof VisionRpcError, String(err));
      assert.equal(err.reason, "STREAM_NOT_FOUND");
    });

    test("analytics: frames carry the line's counts and detections their track ids", { timeout: 120_000 }, async () => {
      const stream = client.stream({
        sources: ["bikes.mp4"],
        everyFrameDelivery: true,
        analytics: { lines: [{ name: "gate", start: { x: 320, y: 0 }, end: { x: 320, y: 272 } }] },
      });
      const lineNames = new Set<string>();
      const trackIds = new Set<bigint>();
      let frames = 0;
      for await (const event of stream) {
        if (event.kind !== "frame") {
          continue;
        }
        event.analytics?.lines.forEach((line) => lineNames.add(line.name));
        event.prediction?.detections.forEach((d) => d.trackId > 0n && trackIds.add(d.trackId));
        if (++frames === 40) {
          break;
        }
      }
      assert.deepEqual([...lineNames], ["gate"]);
      assert.ok(trackIds.size > 0, "people and bicycles are tracked within 40 frames");
    });

    test("cancel() ends the iteration without an error", { timeout: 60_000 }, async () => {
      const stream = client.stream({ sources: ["bikes.mp4"], maxFps: 8 });
      let frames = 0;
      for await (const event of stream) {
        if (event.kind === "frame" && ++frames === 1) {
          stream.cancel();
        }
      }
      assert.ok(stream.cancelled);
    });

    test("an already aborted signal ends at once", async () => {
      const stream = client.stream({ sources: ["bikes.mp4"], maxFps: 7 }, { signal: AbortSignal.abort() });
      const events = [];
      for await (const event of stream) {
        events.push(event);
      }
      assert.deepEqual(events, []);
    });

    test("a stream deadline is DEADLINE_EXCEEDED, not a clean end", { timeout: 60_000 }, async () => {
      const stream = client.stream({ sources: ["bikes.mp4"], maxFps: 6 }, { timeoutMs: 1_500 });
      const err = await (async () => {
        for await (const _ of stream) {
          // keep reading until the deadline
        }
      })().catch((e: unknown) => e);
      assert.ok(err instanceof VisionRpcError, String(err));
      assert.equal(err.codeName, "DEADLINE_EXCEEDED");
      assert.ok(!stream.cancelled);
    });

    test("a stream iterates once", async () => {
      const stream = client.stream({ sources: ["bikes.mp4"], maxFps: 5 }, { signal: AbortSignal.abort() });
      for await (const _ of stream) {
        // nothing: aborted
      }
      await assert.rejects(stream.messages().next(), /iterated only once/);
    });
  });

  describe("several addresses", () => {
    test("a stream that finds one address dead resumes on the next", { timeout: 60_000 }, async () => {
      const dead = await deadAddress();
      const several = createClient([dead, server.address]);
      try {
        const stream = several.stream({ sources: ["bikes.mp4"], maxFps: 4 });
        let frames = 0;
        for await (const event of stream) {
          if (event.kind === "frame" && ++frames === 2) {
            break;
          }
        }
        // Nothing had arrived from the dead address, so the request went out again unchanged (no RESUMED).
        assert.equal(stream.resumes, 1);
        assert.equal(await several.health(), "SERVING", "later calls stay on the address that answered");
      } finally {
        several.close();
      }
    });
  });

  describe("lifecycle", () => {
    test("a closed client refuses calls", async () => {
      const other = createClient(server.address);
      assert.equal(await other.health(), "SERVING");
      other.close();
      other.close(); // idempotent
      await assert.rejects(other.health(), /the client is closed/);
      assert.throws(() => other.stream({ sources: ["bikes.mp4"] }), /the client is closed/);
    });

    test("options are checked", () => {
      assert.throws(() => createClient("127.0.0.1:1", { timeoutMs: 0 }), /timeoutMs: expected > 0 or null, got 0/);
      assert.throws(() => createClient("http://127.0.0.1:1", { tls: true }), /expected https:\/\//);
    });
  });
}
