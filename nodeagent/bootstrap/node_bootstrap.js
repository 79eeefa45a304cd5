// Runs as `node -e <this file>` inside a warm sandbox; see nodeagent/bootstrap/__init__.py.
// Wrapped in a function so none of our bindings share the code's global scope.
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
  const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  for (const key of Object.keys(process.env)) delete process.env[key];
  Object.assign(process.env, request.env);
  vm.runInThisContext(request.code, { filename: '[eval]' });
})();
