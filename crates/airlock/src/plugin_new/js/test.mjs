// Runs the built plugin through `airlock plugin test` ($AIRLOCK, or `airlock` on PATH).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

const config = JSON.stringify({ allow: ['https://app.example.com'] });

function verdict(...request) {
  const out = execFileSync(
    process.env.AIRLOCK ?? 'airlock',
    ['plugin', 'test', '--wasm', '{{file}}.wasm', '--config', config, ...request],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return JSON.parse(out);
}

test('a listed origin is admitted', () => {
  const v = verdict('-H', 'Origin: https://app.example.com', 'GET', '/ws');
  assert.equal(v.verdict, 'allow');
  assert.deepEqual(v.attributes, [['origin', 'https://app.example.com']]);
});

test('another origin is refused', () => {
  const v = verdict('-H', 'Origin: https://evil.example', 'GET', '/ws');
  assert.equal(v.verdict, 'reject');
  assert.equal(v.status, 403);
});
