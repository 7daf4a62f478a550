// Reads JSON lines, each an array of events; writes one JSON line per input: the snapshot the
// dashboard's reducer folds from them, or {"__error__": message}. One process serves many cases
// (tests/test_reducer_property.py feeds it the same events as the Python reducer).
import { createInterface } from "node:readline";
import { reduce } from "../../dashboard/state.js";

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  let out;
  try {
    out = JSON.stringify(reduce(JSON.parse(line)));
  } catch (e) {
    out = JSON.stringify({ __error__: String(e && e.stack || e) });
  }
  process.stdout.write(out + "\n");
}
