// client.inferStream against the harness's real server: answers in order and equal to infer's, refused frames
// answered with their error while the call goes on, back-pressure (wait loses nothing, drop answers frames past
// the bound dropped), call errors thrown, the caller's own errors surfaced, and aborting an endless camera.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";

import { Code, VisionRpcError, createClient, type FrameResult, type InputFrame } from "../src/index.js";
import { serverFromEnvironment } from "./support.js";

const server = serverFromEnvironment("inferStream");

async function collect(results: AsyncIterable<FrameResult>): Promise<FrameResult[]> {
  const out: FrameResult[] = [];
  for await (const result of results) {
    out.push(result);
  }
  return out;
}

function outcome(result: FrameResult): string {
  return result.prediction !== undefined ? "prediction" : result.dropped ? "dropped" : "error";
}

if (server !== undefined) {
  const client = createClient(server.address, { timeoutMs: 120_000 });
  after(() => client.close());
  const coffee = new Uint8Array(readFileSync(join(server.media, "coffee.png")));
  const motorbike = new Uint8Array(readFileSync(join(server.media, "motorcycle_left.png")));

  describe("inferStream", { timeout: 180_000 }, () => {
    test("answers every frame in order, with infer's detections", async () => {
      const images = [coffee, motorbike, coffee, motorbike];
      const results = await collect(client.inferStream(images, { maxInFlight: 2 }));
      assert.deepEqual(
        results.map((r) => r.sequenceNumber),
        [0n, 1n, 2n, 3n],
      );
      const unary = await client.infer(images);
      results.forEach((result, i) => {
        const want = unary.predictions[i]?.detections ?? [];
        const got = result.prediction?.detections ?? [];
        assert.deepEqual(
          got.map((d) => d.className),
          want.map((d) => d.className),
        );
        got.forEach((d, j) => assert.ok(Math.abs((d.box?.xMin ?? 0) - (want[j]?.box?.xMin ?? 0)) <= 1));
      });
    });

    test("input frames keep their numbering and sources", async () => {
      const frames: InputFrame[] = [
        { image: coffee, sequenceNumber: 10 },
        { image: coffee, sourceIndex: 2 },
        { image: coffee, sequenceNumber: 11n },
        { image: coffee },
      ];
      const results = await collect(client.inferStream(frames));
      assert.deepEqual(
        results.map((r) => [r.sourceIndex, r.sequenceNumber]),
        [
          [0, 10n],
          [2, 0n],
          [0, 11n],
          [0, 12n],
        ],
      );
    });

    test("a refused frame carries its error and the call goes on", async () => {
      const results = await collect(client.inferStream([coffee, new TextEncoder().encode("not an image"), coffee]));
      assert.deepEqual(results.map(outcome), ["prediction", "error", "prediction"]);
      const error = results[1]?.error;
      assert.ok(error instanceof VisionRpcError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.equal(error.reason, "UNSUPPORTED_IMAGE_FORMAT");
      assert.equal(error.fieldViolations[0]?.field, "frame.image.encoded");
    });

    for (const drop of [false, true]) {
      test(drop ? "drop answers frames past the bound dropped" : "wait loses nothing", async () => {
        const images = Array.from({ length: 24 }, () => coffee);
        const results = await collect(client.inferStream(images, { maxInFlight: 1, drop }));
        assert.deepEqual(
          results.map((r) => Number(r.sequenceNumber)),
          images.map((_, i) => i),
        );
        const dropped = results.filter((r) => r.dropped).length;
        assert.ok(results.every((r) => r.prediction !== undefined || r.dropped));
        // 24 frames sent at once outpace one frame in flight (~40 ms of inference each).
        assert.equal(dropped > 0, drop, `${dropped} of ${images.length} dropped`);
        assert.ok(dropped < images.length);
      });
    }

    for (const [name, options, code, reason] of [
      ["unknown model", { model: "no-such-model" }, Code.NotFound, "MODEL_NOT_FOUND"],
      ["unknown class", { classes: ["unicorn"] }, Code.InvalidArgument, "UNKNOWN_CLASS"],
    ] as const) {
      test(`a call error is thrown: ${name}`, async () => {
        await assert.rejects(collect(client.inferStream([coffee], options)), (err: unknown) => {
          assert.ok(err instanceof VisionRpcError);
          assert.equal(err.code, code);
          assert.equal(err.reason, reason);
          return true;
        });
      });
    }

    test("the caller's own error is thrown after the answers before it", async () => {
      async function* camera(): AsyncGenerator<Uint8Array> {
        yield coffee;
        yield coffee;
        throw new Error("camera unplugged");
      }
      const seen: FrameResult[] = [];
      await assert.rejects(
        (async () => {
          for await (const result of client.inferStream(camera())) {
            seen.push(result);
          }
        })(),
        /camera unplugged/,
      );
      assert.deepEqual(
        seen.map((r) => r.sequenceNumber),
        [0n, 1n],
      );
    });

    test("aborting ends an endless camera with CANCELLED", async () => {
      function* endless(): Generator<Uint8Array> {
        for (;;) {
          yield coffee;
        }
      }
      const controller = new AbortController();
      let answered = 0;
      await assert.rejects(
        (async () => {
          for await (const result of client.inferStream(endless(), { maxInFlight: 2, signal: controller.signal })) {
            assert.ok(result.prediction !== undefined);
            answered += 1;
            controller.abort();
          }
        })(),
        (err: unknown) => err instanceof VisionRpcError && err.code === Code.Canceled,
      );
      assert.ok(answered >= 1);
    });
  });
}
