// A JavaScript plugin that misbehaves on purpose, for airlock's own tests
// (tests/e2e/plugin_languages.rs). The request's `x-misbehave` header says how:
//   loop   run forever (the call's deadline stops it)
//   alloc  allocate without bound (the instance's memory cap stops it)
//   throw  throw an exception
// Anything else is allowed unchanged. Built with plugins/tenant-router-js's
// ComponentizeJS: `npx --prefix ../tenant-router-js componentize-js guest.js ...`.

export function configure(_config) {}

export function onHandshake(request) {
  const mode = request.header('x-misbehave');
  if (mode === 'loop') {
    for (;;) {}
  }
  if (mode === 'alloc') {
    const kept = [];
    for (;;) {
      kept.push(new Uint8Array(1 << 20).fill(1));
    }
  }
  if (mode === 'throw') {
    throw new Error('thrown on purpose');
  }
  return {
    tag: 'allow',
    val: { setHeaders: [], removeHeaders: [], responseHeaders: [], attributes: [] },
  };
}
