// Segmentation mask decoding, without a server.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { MaskSchema } from "../src/gen/visionrpc/v1/types_pb.js";
import { maskArea, maskRows } from "../src/mask.js";

describe("masks", () => {
  const cases: { name: string; counts: number[]; rows: boolean[][]; area: number }[] = [
    {
      name: "starts with object",
      counts: [0, 1, 3, 2],
      rows: [
        [true, false, false],
        [false, true, true],
      ],
      area: 3,
    },
    {
      name: "starts with background",
      counts: [2, 3, 1],
      rows: [
        [false, false, true],
        [true, true, false],
      ],
      area: 3,
    },
    {
      name: "empty",
      counts: [6],
      rows: [
        [false, false, false],
        [false, false, false],
      ],
      area: 0,
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const mask = create(MaskSchema, { left: 4, top: 5, width: 3, height: 2, counts: c.counts });
      assert.deepEqual(maskRows(mask), c.rows);
      assert.equal(maskArea(mask), c.area);
    });
  }
});
