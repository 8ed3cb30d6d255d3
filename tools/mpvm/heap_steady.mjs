// Run tools/heap/steady_state.py on the official WebAssembly port with a
// fixed GC heap (loadMicroPython heapsize).  Used by tools/heap_budget.py.
//   node tools/mpvm/heap_steady.mjs HEAPSIZE_BYTES TICKS [--mpy]
import fs from "node:fs";
import path from "node:path";
import { REPO, newVM, run } from "./vm.mjs";

const heapsize = parseInt(process.argv[2] || "196608", 10);
const ticks = parseInt(process.argv[3] || "600", 10);
const mpy = process.argv.includes("--mpy");
const lines = [];
const mp = await newVM({ heapsize, mpy, out: (l) => lines.push(l) });
mp.FS.mkdirTree("/w");
const script = fs.readFileSync(path.join(REPO, "tools", "heap", "steady_state.py"), "utf8");
const err = run(mp, `_CS_ARGS = ["steady_state.py", "${ticks}", "/w/spool"]\n` + script);
for (const l of lines) console.log(l);
if (err !== null) {
  console.log(err);
  process.exitCode = 2;
}
