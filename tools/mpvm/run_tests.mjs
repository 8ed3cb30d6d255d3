// Run firmware unit tests (plain `def test_*():` functions) on the official
// MicroPython WebAssembly port, one fresh VM per test file.
//
//   node tools/mpvm/run_tests.mjs [--mpy] [--build DIR] [-v] [test files...]
//
// Default files: tests/firmware/mp/test_*.py.  --mpy loads the .mpy files
// from build/firmware/lib/csfw (tools/build_firmware.py) instead of sources.
// Last line: "N passed, N failed"; exit status 1 if anything failed or a test
// file failed to import (counted as one failure), 2 on usage errors.
import fs from "node:fs";
import path from "node:path";
import { REPO, newVM, run } from "./vm.mjs";

const args = process.argv.slice(2);
const opts = { mpy: false, buildDir: undefined };
let verbose = false;
const files = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--mpy") opts.mpy = true;
  else if (a === "--build") opts.buildDir = path.resolve(args[++i]);
  else if (a === "-v") verbose = true;
  else if (a.startsWith("-")) {
    console.error(`unknown option ${a}`);
    process.exit(2);
  } else files.push(path.resolve(a));
}
if (files.length === 0) {
  const dir = path.join(REPO, "tests", "firmware", "mp");
  for (const n of fs.readdirSync(dir).sort()) {
    if (n.startsWith("test_") && n.endsWith(".py")) files.push(path.join(dir, n));
  }
}

const HARNESS = (mod) => `
import sys
_cs_passed = 0
_cs_failed = 0
_cs_import_ok = False
try:
    _cs_mod = __import__(${JSON.stringify(mod)})
    _cs_import_ok = True
except BaseException as _cs_e:
    print("IMPORT ERROR " + ${JSON.stringify(mod)})
    sys.print_exception(_cs_e)
if _cs_import_ok:
    for _cs_name in sorted(dir(_cs_mod)):
        if not _cs_name.startswith("test_"):
            continue
        _cs_fn = getattr(_cs_mod, _cs_name)
        if not callable(_cs_fn):
            continue
        try:
            _cs_fn()
            _cs_passed += 1
            if ${verbose ? "True" : "False"}:
                print("PASS " + ${JSON.stringify(mod)} + "::" + _cs_name)
        except BaseException as _cs_e:
            _cs_failed += 1
            print("FAIL " + ${JSON.stringify(mod)} + "::" + _cs_name)
            sys.print_exception(_cs_e)
`;

let passed = 0;
let failed = 0;
for (const file of files) {
  const rel = path.relative(REPO, file);
  if (!fs.existsSync(file)) {
    console.log(`MISSING ${rel}`);
    failed += 1;
    continue;
  }
  const mod = path.basename(file, ".py");
  let mp;
  try {
    mp = await newVM(opts);
  } catch (e) {
    console.log(`VM ERROR ${rel}: ${e.message}`);
    failed += 1;
    continue;
  }
  mp.FS.mkdirTree("/t");
  mp.FS.writeFile(`/t/${mod}.py`, fs.readFileSync(file));
  const err = run(mp, `import sys\nsys.path.insert(0, "/t")\n` + HARNESS(mod));
  if (err !== null) {
    console.log(`HARNESS ERROR ${rel}\n${err}`);
    failed += 1;
    continue;
  }
  const p = mp.globals.get("_cs_passed");
  const f = mp.globals.get("_cs_failed");
  const importOk = mp.globals.get("_cs_import_ok");
  passed += p;
  failed += f + (importOk ? 0 : 1);
  if (verbose || f || !importOk) console.log(`${rel}: ${p} passed, ${f + (importOk ? 0 : 1)} failed`);
}
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
