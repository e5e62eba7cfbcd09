// The stream affinity key against the cases every SDK checks (tests/mesh/pipeline_key_cases.json).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { fromJson, type JsonValue } from "@bufbuild/protobuf";

import { StreamPredictionsRequestSchema } from "../src/gen/visionrpc/v1/inference_pb.js";
import { canonicalPipelineText, pipelineKey, withPipelineKey } from "../src/pipelineKey.js";

interface Case {
  name: string;
  request: JsonValue;
  canonical: string | null;
  key: string | null;
}

// Compiled to dist/test/: the repository root is four folders up.
const casesUrl = new URL("../../../../tests/mesh/pipeline_key_cases.json", import.meta.url);
const cases = (JSON.parse(readFileSync(casesUrl, "utf8")) as { cases: Case[] }).cases;

describe("pipeline key", () => {
  test("the shared cases are there", () => {
    assert.ok(cases.length > 0);
  });
  for (const c of cases) {
    test(c.name, () => {
      const request = fromJson(StreamPredictionsRequestSchema, c.request);
      assert.equal(pipelineKey(request) ?? null, c.key);
      if (c.canonical !== null) {
        assert.equal(canonicalPipelineText(request), c.canonical);
      }
    });
  }
  test("the header joins the caller's headers, which stay as they were", () => {
    const request = fromJson(StreamPredictionsRequestSchema, { sources: [{ path: "bikes.mp4" }] });
    const own = { authorization: "Bearer k" };
    const merged = new Headers(withPipelineKey(request, own));
    assert.equal(merged.get("x-visionrpc-pipeline-key"), "cd33d2830f04d7eec77831256e9432f9");
    assert.equal(merged.get("authorization"), "Bearer k");
    assert.deepEqual(Object.keys(own), ["authorization"]);
  });
});
