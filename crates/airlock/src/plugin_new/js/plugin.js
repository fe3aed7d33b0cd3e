// {{name}}: an airlock handshake plugin in JavaScript.
//
// airlock calls `configure` once per instance with the plugin's `config` table as JSON,
// then `onHandshake` for every request on the routes that list the plugin. Edit
// `decide`; `npm run build` makes {{file}}.wasm, `npm test` runs it through
// `airlock plugin test`.

import { log } from 'airlock:plugin/host@0.3.0';

let allowed = new Set();

export function configure(json) {
  const config = JSON.parse(json);
  if (!Array.isArray(config.allow) || !config.allow.every((o) => typeof o === 'string')) {
    // Throwing refuses the configuration: airlock names the plugin and does not start.
    throw 'config.allow must be a list of origins, like ["https://app.example.com"]';
  }
  allowed = new Set(config.allow);
}

/** The verdict for one request: admit listed origins, refuse the rest. */
function decide(request) {
  const origin = request.header('origin');
  if (origin === undefined || !allowed.has(origin)) {
    return reject(403, 'origin not allowed');
  }
  return allow({ attributes: [['origin', origin]] });
}

export function onHandshake(request) {
  try {
    return decide(request);
  } catch (e) {
    // airlock answers with the plugin's `on_error`; the message goes to its log (a
    // plugin has no stdout or stderr).
    log('error', `${e}\n${e?.stack ?? ''}`);
    throw e;
  }
}

/** Let the request through, with the changes given (see `mutations` in the WIT). */
function allow(changes = {}) {
  return {
    tag: 'allow',
    val: { setHeaders: [], removeHeaders: [], responseHeaders: [], attributes: [], ...changes },
  };
}

/** Answer the client with `status` and a text body. */
function reject(status, message) {
  return {
    tag: 'reject',
    val: { status, body: `${message}\n`, headers: [['content-type', 'text/plain']] },
  };
}
