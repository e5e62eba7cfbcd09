// Follows one stream and prints every message as a JSON line: the same command line and output as the Python
// and Go probes, so one test can drive all three clients through a resume (docs/stream-resume.md).
//
//   npm run build
//   node dist/examples/streamprobe.js --addresses 127.0.0.1:50051,127.0.0.1:50052 --path bikes.mp4 \
//     [--max-fps 25] [--every-frame] [--duration-s 10]
//
// stdout, one object per line:
//   {"kind":"frame","stream_id":"…","cursor":N,"source_index":I,"sequence_number":N}
//   {"kind":"status","event":"STARTED","stream_id":"…","cursor":N}
//   {"kind":"status","event":"RESUMED",…,"outcome":"REPLAYED","previous_stream_id":"…","messages_lost":N,"downtime_ms":F}
//   {"kind":"end"}                                                          exit 0: the stream ended, or time was up
//   {"kind":"error","code":"UNAVAILABLE","reason":"SHUTTING_DOWN","message":"…"}   exit 1

import { parseArgs } from "node:util";

import { VisionRpcError, createClient, type StreamMessage, type StreamRequest } from "../src/index.js";

const USAGE =
  "usage: streamprobe --addresses HOST:PORT[,HOST:PORT...] (--path P | --url U) [--max-fps F] [--every-frame] " +
  "[--duration-s S]";

function print(line: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(line) + "\n");
}

function printError(err: unknown): void {
  const error = VisionRpcError.from(err);
  print({ kind: "error", code: error.codeName, reason: error.reason, message: error.rawMessage });
}

function eventLine(event: StreamMessage): Record<string, unknown> {
  if (event.kind === "frame") {
    return {
      kind: "frame",
      stream_id: event.streamId,
      cursor: event.cursor,
      source_index: event.sourceIndex,
      sequence_number: event.sequenceNumber,
    };
  }
  if (event.kind === "events") {
    return { kind: "events", stream_id: event.streamId, cursor: event.cursor, events: event.events.length };
  }
  const line: Record<string, unknown> = {
    kind: "status",
    event: event.event.toUpperCase(),
    stream_id: event.streamId,
    cursor: event.cursor,
  };
  if (event.resume !== undefined) {
    line["outcome"] = event.resume.outcome.toUpperCase();
    line["previous_stream_id"] = event.resume.previousStreamId;
    line["messages_lost"] = event.resume.messagesLost;
    line["downtime_ms"] = event.resume.downtimeMs;
  }
  return line;
}

/** The command line -> addresses, the stream request and the time limit; throws with the usage when wrong. */
function parseCommandLine(argv: string[]): { addresses: string[]; request: StreamRequest; durationMs?: number } {
  const { values } = parseArgs({
    args: argv,
    options: {
      addresses: { type: "string" },
      path: { type: "string" },
      url: { type: "string" },
      "max-fps": { type: "string" },
      "every-frame": { type: "boolean" },
      "duration-s": { type: "string" },
    },
    strict: true,
  });
  const addresses = (values.addresses ?? "").split(",").filter((a) => a !== "");
  const source = values.path ?? values.url;
  if (addresses.length === 0 || source === undefined || (values.path !== undefined && values.url !== undefined)) {
    throw new TypeError(USAGE);
  }
  // The client sends a source containing "://" as a URL and anything else as a path.
  if (values.url !== undefined && !values.url.includes("://")) {
    throw new TypeError(`--url: expected scheme://..., got ${values.url}`);
  }
  const request: StreamRequest = { sources: [source] };
  if (values["max-fps"] !== undefined) {
    request.maxFps = positive("--max-fps", values["max-fps"]);
  }
  if (values["every-frame"] === true) {
    request.everyFrameDelivery = true;
  }
  const durationS = values["duration-s"];
  return durationS === undefined
    ? { addresses, request }
    : { addresses, request, durationMs: positive("--duration-s", durationS) * 1000 };
}

function positive(name: string, text: string): number {
  const value = Number(text);
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`${name}: expected a number > 0, got ${text}`);
  }
  return value;
}

async function main(): Promise<number> {
  let parsed: ReturnType<typeof parseCommandLine>;
  try {
    parsed = parseCommandLine(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    print({ kind: "error", code: "INVALID_ARGUMENT", reason: "", message: String(err) });
    return 1;
  }
  const client = createClient(parsed.addresses);
  const controller = new AbortController();
  // Time up is a normal end: aborting cancels the subscription and the loop ends without an error.
  const timer = parsed.durationMs === undefined ? undefined : setTimeout(() => controller.abort(), parsed.durationMs);
  try {
    for await (const event of client.stream(parsed.request, { signal: controller.signal })) {
      print(eventLine(event));
    }
    print({ kind: "end" });
    return 0;
  } catch (err) {
    printError(err);
    return 1;
  } finally {
    clearTimeout(timer);
    client.close();
  }
}

// A reader that stops reading (closes the pipe) is done with us: leave quietly instead of crashing on EPIPE.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code !== "EPIPE") {
    throw err;
  }
  process.exit(0);
});
// exitCode rather than exit(): stdout may be a pipe, whose writes finish after this line runs.
process.exitCode = await main();
