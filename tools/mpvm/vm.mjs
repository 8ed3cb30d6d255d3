// Shared helpers: a fresh official MicroPython WebAssembly VM with the
// Chairside firmware installed in its filesystem.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

function listFiles(dir, suffix) {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((n) => n.endsWith(suffix)).sort();
}

// Options: mpy (use build/firmware/lib/csfw/*.mpy instead of sources),
// buildDir, heapsize (bytes), out (line callback).
export async function newVM(opts = {}) {
  const out = opts.out || ((line) => process.stdout.write(line + "\n"));
  const mp = await loadMicroPython({
    heapsize: opts.heapsize || 1024 * 1024,
    stdout: out,
    stderr: out,
  });
  mp.FS.mkdirTree("/lib/csfw");
  if (opts.mpy) {
    const lib = path.join(opts.buildDir || path.join(REPO, "build", "firmware"), "lib", "csfw");
    const names = listFiles(lib, ".mpy");
    if (names.length === 0) {
      throw new Error(`no .mpy files in ${lib}: run tools/build_firmware.py first`);
    }
    for (const n of names) mp.FS.writeFile(`/lib/csfw/${n}`, fs.readFileSync(path.join(lib, n)));
  } else {
    const src = path.join(REPO, "firmware", "csfw");
    for (const n of listFiles(src, ".py")) {
      mp.FS.writeFile(`/lib/csfw/${n}`, fs.readFileSync(path.join(src, n)));
    }
  }
  for (const name of ["mptest.py", "mpgateway.py"]) {  // test helpers (stand-ins)
    const helper = path.join(REPO, "tests", "firmware", "mp", name);
    if (fs.existsSync(helper)) mp.FS.writeFile(`/lib/${name}`, fs.readFileSync(helper));
  }
  mp.FS.mkdirTree("/tmp");
  return mp;
}

// Run code; return null on success or the Python error text.
export function run(mp, code) {
  try {
    mp.runPython(code);
    return null;
  } catch (e) {
    if (e && e.name === "PythonError") return e.message;
    throw e;
  }
}
