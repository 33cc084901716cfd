// Runs a wasm32-wasip1 program under Node.js's WASI (preview1): cargo's test runner for that
// target (scripts/test-wasm32-core sets CARGO_TARGET_WASM32_WASIP1_RUNNER to this script), so
// filter/core's tests run at 32 bits, as the filter does inside Envoy.
//
// Usage: node --no-warnings scripts/wasi-run.mjs PROGRAM.wasm [ARGS...]
// The program sees the repository at its real path (tests read config/ and docs/ through
// CARGO_MANIFEST_DIR) and nothing else of the file system, and this process's environment.
// Exit status: the program's own; a trap (a panic aborts on wasm32) exits 134 like SIGABRT.
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { WASI } from "node:wasi";

const [program, ...args] = process.argv.slice(2);
if (!program) {
  console.error("usage: wasi-run.mjs PROGRAM.wasm [ARGS...]");
  process.exit(2);
}
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const wasi = new WASI({
  version: "preview1",
  args: [program, ...args],
  env: process.env,
  preopens: { [root]: root },
  returnOnExit: true,
});
try {
  const module = await WebAssembly.compile(await readFile(program));
  const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
  process.exitCode = wasi.start(instance);
} catch (e) {
  console.error(`wasi-run: ${program} trapped: ${e}`);
  process.exitCode = 134;
}
