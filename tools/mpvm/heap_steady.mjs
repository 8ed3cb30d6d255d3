// Run tools/heap/steady_state.py on the official WebAssembly port and print
// its "HEAP {json}" line.  Used by tools/heap_budget.py.
//   node tools/mpvm/heap_steady.mjs TICKS [--mpy]
// gc.collect() on this port frees nothing while a runPython call is active,
// so this driver calls gc.collect() and tick(i) as separate runPython calls.
// The port's heap grows on demand: the figure is gc.mem_alloc() high-water,
// not a MemoryError under a fixed heap.
import fs from "node:fs";
import path from "node:path";
import { REPO, newVM, run } from "./vm.mjs";

const ticks = parseInt(process.argv[2] || "600", 10);
const mpy = process.argv.includes("--mpy");
const mp = await newVM({ mpy });
mp.FS.mkdirTree("/w");
const script = fs.readFileSync(path.join(REPO, "tools", "heap", "steady_state.py"), "utf8");
function must(code) {
  const err = run(mp, code);
  if (err !== null) {
    console.log(err);
    process.exit(2);
  }
}
must(`_CS_DRIVEN = True\n_CS_ARGS = ["steady_state.py", "${ticks}", "/w/spool"]\n` + script);
for (let i = 0; i < ticks; i++) {
  must("gc.collect()");
  must(`tick(${i})`);
}
must("report()");
