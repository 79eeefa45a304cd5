// Runs as `node -e <this file>` inside a warm sandbox; see nodeagent/bootstrap/__init__.py.
// Wrapped in a function so none of our bindings share the code's global scope. The request
// format is nodeagent/isolation/request.py's.
(function baponiBootstrap() {
  const fs = require('fs');
  const vm = require('vm');
  // The streams are made on first use, which costs the first console.log ~5 ms: make them
  // ahead. They are the same objects the code would get.
  process.stdout;
  process.stderr;
  // So are console.log's formatting and its streams' write path (~1 ms more): run them
  // ahead, writing nothing (a write of no bytes is no output).
  require('util').formatWithOptions({}, '%s %d %j %o', 'a', 1, {}, [1]);
  process.stdout.write('');
  process.stderr.write('');
  // fd 3, an eventfd the sandbox's supervisor reads, stays open to say how the code ended
  // (nodeagent/isolation/supervisor.py). Eventfds take a native-endian 64-bit count.
  const littleEndian = require('os').endianness() === 'LE';
  const count = (value) => {
    const buffer = Buffer.alloc(8);
    if (littleEndian) buffer.writeBigUInt64LE(value);
    else buffer.writeBigUInt64BE(value);
    return buffer;
  };
  fs.writeSync(3, count(1n));
  const chunks = [];
  const buffer = Buffer.alloc(1 << 16);
  let size;
  while ((size = fs.readSync(0, buffer, 0, buffer.length, null)) > 0) {
    chunks.push(Buffer.from(buffer.subarray(0, size)));
  }
  const data = Buffer.concat(chunks);
  const newline = data.indexOf(10);
  const end = newline + 1 + Number(data.subarray(0, newline).toString());
  const code = data.subarray(newline + 1, end).toString('utf8');
  for (const key of Object.keys(process.env)) delete process.env[key];
  for (const item of data.subarray(end).toString('utf8').split('\0')) {
    const at = item.indexOf('=');
    if (at > 0) process.env[item.slice(0, at)] = item.slice(at + 1);
  }
  // Once the code's own 'exit' listeners have run, end at once, as process.exit() does: the
  // teardown of node's environment and heap (~4 ms) is nothing the code can observe. Not
  // after an uncaught error, which node prints only after emitting 'exit'. Its writes to
  // stdout and stderr are done by then (synchronous, to pipes), so the end is told first on
  // fd 3, unless the code closed it.
  let crashed = false;
  process.on('uncaughtExceptionMonitor', () => { crashed = true; });
  const emit = process.emit;
  process.emit = function baponiEmit(event, ...args) {
    const result = emit.call(this, event, ...args);
    if (event === 'exit' && !crashed) {
      const code = (process.exitCode ?? args[0] ?? 0) & 0xff;
      try {
        fs.writeSync(3, count((1n << 32n) | BigInt(code << 8))); // the wait status, as wait() says
      } catch (e) { /* closed by the code: init reports the end instead */ }
      process.reallyExit(code);
    }
    return result;
  };
  vm.runInThisContext(code, { filename: '[eval]' });
})();
