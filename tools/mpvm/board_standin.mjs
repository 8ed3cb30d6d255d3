// A stand-in chair box for flashing tests: the official MicroPython
// WebAssembly VM behind a raw REPL served over TCP.
//
// mpremote connects with `socket://127.0.0.1:PORT` and drives it exactly as
// it drives a Pico W over USB: Ctrl-C, Ctrl-A (raw REPL), Ctrl-D (soft
// reboot / execute), Ctrl-B (friendly REPL).  Raw-paste mode is answered with
// "R\x00" (understood, not supported) because the VM cannot pace the flow
// control it needs; mpremote then falls back to the plain raw REPL.
//
// The VM's filesystem plays the board's flash: it survives soft and hard
// resets (a fresh VM is started and the files are carried over) and, with
// --persist DIR, is loaded from and written back to a host folder so a test
// can inspect what landed "on the board".  `machine.reset()` closes the
// connection, reboots the VM and prints `RESET <n>` on stdout.
//
// Usage: node board_standin.mjs [--port N] [--persist DIR] [--drop-after-bytes N]
// Prints `LISTENING <port>` on stdout once it accepts connections.

import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const BANNER = "MicroPython (chairside stand-in: WebAssembly VM) ; Raspberry Pi Pico W stand-in\r\n";
const RAW_PROMPT = "raw REPL; CTRL-B to exit\r\n>";
const SYSTEM_DIRS = new Set(["/dev", "/proc", "/tmp", "/home"]);

// Emscripten errno numbers -> the numbers a real board prints.
const ERRNO_MAP = {
  44: [2, "ENOENT"], 20: [17, "EEXIST"], 54: [20, "ENOTDIR"], 31: [21, "EISDIR"],
  55: [39, "ENOTEMPTY"], 28: [22, "EINVAL"], 51: [28, "ENOSPC"], 2: [13, "EACCES"],
};

function parseArgs(argv) {
  const opts = { port: 0, persist: null, dropAfterBytes: 0 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[i + 1];
    if (key === "--port") { opts.port = parseInt(value, 10); i++; }
    else if (key === "--persist") { opts.persist = value; i++; }
    else if (key === "--drop-after-bytes") { opts.dropAfterBytes = parseInt(value, 10); i++; }
    else { throw new Error("unknown argument " + key); }
  }
  return opts;
}

// ---- the "board": a VM plus its flash filesystem -------------------------

function walkFiles(FS, dir, out) {
  for (const name of FS.readdir(dir)) {
    if (name === "." || name === "..") continue;
    const full = dir === "/" ? "/" + name : dir + "/" + name;
    if (SYSTEM_DIRS.has(full)) continue;
    const st = FS.stat(full);
    if (FS.isDir(st.mode)) {
      out.push({ path: full, dir: true });
      walkFiles(FS, full, out);
    } else {
      out.push({ path: full, dir: false, data: FS.readFile(full) });
    }
  }
  return out;
}

function walkHost(root, rel, out) {
  for (const name of fs.readdirSync(path.join(root, rel))) {
    const r = rel + "/" + name;
    const st = fs.statSync(path.join(root, r));
    if (st.isDirectory()) {
      out.push({ path: r, dir: true });
      walkHost(root, r, out);
    } else {
      out.push({ path: r, dir: false, data: fs.readFileSync(path.join(root, r)) });
    }
  }
  return out;
}

class Board {
  constructor(opts) {
    this.opts = opts;
    this.vm = null;
    this.out = [];
    this.resetPending = false;
    this.resets = 0;
  }

  async boot(files) {
    const vm = await loadMicroPython({
      stdout: (bytes) => { for (const b of bytes) this.out.push(b); },
      linebuffer: false,
    });
    vm.registerJsModule("machine", {
      reset: () => { this.resetPending = true; },
      soft_reset: () => { this.resetPending = true; },
    });
    for (const f of files) {
      if (f.dir) vm.FS.mkdirTree(f.path);
      else {
        vm.FS.mkdirTree(path.posix.dirname(f.path));
        vm.FS.writeFile(f.path, f.data);
      }
    }
    this.vm = vm;
  }

  files() {
    return walkFiles(this.vm.FS, "/", []);
  }

  async reboot() {
    await this.boot(this.files());
  }

  persist() {
    if (!this.opts.persist) return;
    fs.rmSync(this.opts.persist, { recursive: true, force: true });
    fs.mkdirSync(this.opts.persist, { recursive: true });
    for (const f of this.files()) {
      const target = path.join(this.opts.persist, f.path);
      if (f.dir) fs.mkdirSync(target, { recursive: true });
      else {
        fs.mkdirSync(path.dirname(target), { recursive: true });
        fs.writeFileSync(target, f.data);
      }
    }
  }

  // Run one raw-REPL command; returns [stdout bytes, error text].
  exec(code) {
    this.out = [];
    let err = "";
    try {
      this.vm.runPython(code);
    } catch (e) {
      if (e.name !== "PythonError") throw e;
      err = e.message.replace(/OSError: (\d+)$/m, (m, n) => {
        const mapped = ERRNO_MAP[parseInt(n, 10)];
        return mapped ? "OSError: [Errno " + mapped[0] + "] " + mapped[1] : m;
      });
    }
    return [Buffer.from(this.out), err];
  }
}

// ---- the raw REPL protocol over one connection ---------------------------

function serveConnection(board, sock, onReset) {
  let mode = "friendly";
  let line = [];
  let pasteProbe = 0; // bytes of "\x05A\x01" seen
  let received = 0;
  let busy = Promise.resolve();

  const send = (s) => { if (!sock.destroyed) sock.write(typeof s === "string" ? Buffer.from(s, "latin1") : s); };

  const softReboot = async () => {
    send("\r\nMPY: soft reboot\r\n");
    await board.reboot();
    send(mode === "raw" ? RAW_PROMPT : BANNER + ">>> ");
  };

  const handle = async (b) => {
    if (mode === "friendly") {
      if (b === 0x01) { mode = "raw"; line = []; send("\r\n" + RAW_PROMPT); }
      else if (b === 0x03) { line = []; send("\r\n>>> "); }
      else if (b === 0x04) { await softReboot(); }
      return; // the friendly REPL is not emulated beyond control characters
    }
    if (pasteProbe > 0) {
      const expect = pasteProbe === 1 ? 0x41 : 0x01;
      if (b === expect) {
        pasteProbe += 1;
        if (pasteProbe === 3) { pasteProbe = 0; send("R\x00"); }
        return;
      }
      pasteProbe = 0;
    }
    if (b === 0x05 && line.length === 0) { pasteProbe = 1; return; }
    if (b === 0x01) { line = []; send("\r\n" + RAW_PROMPT); return; }
    if (b === 0x02) { mode = "friendly"; line = []; send("\r\n" + BANNER + ">>> "); return; }
    if (b === 0x03) { line = []; return; }
    if (b === 0x04) {
      if (line.length === 0) { await softReboot(); return; }
      const code = Buffer.from(line).toString("utf8");
      line = [];
      send("OK");
      const [out, err] = board.exec(code);
      send(out);
      send("\x04");
      send(err);
      send("\x04>");
      if (board.resetPending) {
        board.resetPending = false;
        sock.end();
        await onReset();
      }
      return;
    }
    line.push(b);
  };

  sock.on("data", (data) => {
    received += data.length;
    if (board.opts.dropAfterBytes > 0 && received > board.opts.dropAfterBytes) {
      sock.destroy(); // a cable pulled mid-transfer
      return;
    }
    busy = busy.then(async () => {
      for (const b of data) {
        if (sock.destroyed) return;
        await handle(b);
      }
    }).catch((e) => { console.error("stand-in error:", e); sock.destroy(); });
  });
  sock.on("error", () => {});
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const board = new Board(opts);
  let files = [];
  if (opts.persist && fs.existsSync(opts.persist)) files = walkHost(opts.persist, "", []);
  await board.boot(files);

  let queue = Promise.resolve();
  const server = net.createServer((sock) => {
    sock.setNoDelay(true);
    // one client at a time, like a USB serial port
    queue = queue.then(() => new Promise((resolve) => {
      sock.on("close", resolve);
      serveConnection(board, sock, async () => {
        board.resets += 1;
        await board.reboot();
        board.persist();
        process.stdout.write("RESET " + board.resets + "\n");
      });
    }));
  });
  server.listen(opts.port, "127.0.0.1", () => {
    process.stdout.write("LISTENING " + server.address().port + "\n");
  });
  const stop = () => { board.persist(); server.close(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => { console.error(e); process.exit(1); });
