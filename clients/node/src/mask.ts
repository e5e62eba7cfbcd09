// Segmentation masks (Detection.mask, decoder yolov8-seg): run-length encoded over the detection's box.
//
// A mask covers image columns [left, left + width) and rows [top, top + height); `counts` alternate background
// and object runs in row-major order, starting with background (possibly 0). These helpers decode it.

import type { Mask } from "./gen/visionrpc/v1/types_pb.js";

/** The mask as `height` rows of `width` booleans, true where the object is (row r, column c is image pixel
 * (left + c, top + r)). Runs that overrun the grid are cut at its end. */
export function maskRows(mask: Mask): boolean[][] {
  const flat = new Array<boolean>(mask.width * mask.height).fill(false);
  let position = 0;
  mask.counts.forEach((run, index) => {
    const end = Math.min(position + run, flat.length);
    if (index % 2 === 1) flat.fill(true, position, end);
    position = end;
  });
  const rows: boolean[][] = [];
  for (let r = 0; r < mask.height; r++) rows.push(flat.slice(r * mask.width, (r + 1) * mask.width));
  return rows;
}

/** Object pixels of a mask. */
export function maskArea(mask: Mask): number {
  return mask.counts.reduce((area, run, index) => (index % 2 === 1 ? area + run : area), 0);
}
