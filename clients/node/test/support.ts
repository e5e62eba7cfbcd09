// Shared by the test suites: finding the harness's servers, and addresses where no server is.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

export const HARNESS_HINT =
  "run it through the harness, which starts a real server and sets VISIONRPC_ADDRESS and " +
  "VISIONRPC_CONFORMANCE_MEDIA: scripts/test-node (or: python tests/conformance/harness.py --cwd clients/node -- npm test)";

/** The package root (the folder of clients/node/package.json), found from here whether run from src or dist. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, "package.json");
    if (
      existsSync(manifest) &&
      (JSON.parse(readFileSync(manifest, "utf8")) as { name?: string }).name === "@visionrpc/client"
    ) {
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) {
      throw new Error("cannot find the @visionrpc/client package root above " + fileURLToPath(import.meta.url));
    }
    dir = parent;
  }
}

/** The repository root: clients/node/../.. */
export function repositoryRoot(): string {
  return resolve(packageRoot(), "..", "..");
}

export interface Server {
  address: string;
  media: string;
  /** VISIONRPC_RECYCLING_ADDRESS: the harness's server that recycles connections every ~2 s (resume cases). */
  recyclingAddress: string | undefined;
}

/**
 * The server from the harness's environment, or undefined after registering one FAILING test that says how to
 * run the suite: a suite that needs a server must not pass (or skip) silently without one.
 */
export function serverFromEnvironment(suite: string): Server | undefined {
  const address = process.env["VISIONRPC_ADDRESS"];
  const media = process.env["VISIONRPC_CONFORMANCE_MEDIA"];
  if (address === undefined || address === "" || media === undefined || media === "") {
    test(`${suite}: needs a server`, () => {
      throw new Error(
        `VISIONRPC_ADDRESS and VISIONRPC_CONFORMANCE_MEDIA are not set: the ${suite} suite needs a real visionrpc ` +
          `server; ${HARNESS_HINT}`,
      );
    });
    return undefined;
  }
  const recyclingAddress = process.env["VISIONRPC_RECYCLING_ADDRESS"];
  return { address, media, recyclingAddress: recyclingAddress === "" ? undefined : recyclingAddress };
}

export const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

/** A loopback address nobody listens on (a port bound, then released): connecting is refused at once. */
export async function deadAddress(): Promise<string> {
  const listener = createServer();
  await new Promise<void>((done) => listener.listen(0, "127.0.0.1", done));
  const address = listener.address();
  await new Promise<void>((done) => listener.close(() => done()));
  assert.ok(address !== null && typeof address === "object");
  return `127.0.0.1:${address.port}`;
}
