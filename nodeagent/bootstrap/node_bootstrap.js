// Runs as `node -e <this file>` inside a warm sandbox; see nodeagent/bootstrap/__init__.py.
// Wrapped in a function so none of our bindings share the code's global scope. The request
// format is nodeagent/isolation/request.py's.
(function baponiBootstrap() {
  const fs = require('fs');
  const vm = require('vm');
  fs.writeSync(3, 'R');
  fs.closeSync(3);
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
  vm.runInThisContext(code, { filename: '[eval]' });
})();
