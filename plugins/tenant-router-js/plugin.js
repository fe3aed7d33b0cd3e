// tenant-router: send each WebSocket (or request) to its tenant's upstream pool.
//
// The tenant comes from a request header (`x-tenant` by default) or, when `domain` is
// set, from the host's first label (`acme.chat.example.com` -> `acme`). Only tenants
// listed in the config get through, each to the pool the config names for it; the
// tenant becomes the request's limit key (so `key = "plugin"` limits count per tenant),
// an access-log attribute, and a header the upstream sees.
//
// Built with ComponentizeJS against airlock's WIT: `npm run build`.

import { log } from 'airlock:plugin/host@0.3.0';

/** Tenant names: lowercase letters, digits and dashes, as in a DNS label. */
const TENANT = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

let settings = null;

/**
 * Read the plugin's `config` table. Throwing refuses the configuration: airlock names
 * the plugin and the message, and does not start.
 */
export function configure(json) {
  const config = JSON.parse(json);
  const tenants = config.tenants;
  if (tenants === null || typeof tenants !== 'object' || Array.isArray(tenants)) {
    throw 'config.tenants must be a table of tenant = "upstream pool"';
  }
  const pools = new Map();
  for (const [tenant, pool] of Object.entries(tenants)) {
    if (!TENANT.test(tenant)) {
      throw `config.tenants: \`${tenant}\` is not a tenant name (lowercase letters, digits, dashes)`;
    }
    if (typeof pool !== 'string' || pool === '') {
      throw `config.tenants.${tenant} must name an upstream pool`;
    }
    pools.set(tenant, pool);
  }
  const header = (config.header ?? 'x-tenant').toLowerCase();
  const domain = config.domain === undefined ? null : `.${config.domain.toLowerCase()}`;
  settings = { pools, header, domain };
}

/** The tenant a request names, or null. */
function tenantOf(request) {
  const named = request.header(settings.header);
  if (named !== undefined) {
    return named.trim().toLowerCase();
  }
  if (settings.domain !== null) {
    const host = request.authority().toLowerCase().replace(/:\d+$/, '');
    if (host.endsWith(settings.domain)) {
      return host.slice(0, -settings.domain.length);
    }
  }
  return null;
}

function reject(status, message) {
  return {
    tag: 'reject',
    val: { status, body: `${message}\n`, headers: [['content-type', 'text/plain']] },
  };
}

export function onHandshake(request) {
  const tenant = tenantOf(request);
  if (tenant === null) {
    return reject(400, `no tenant: send the ${settings.header} header`);
  }
  const pool = settings.pools.get(tenant);
  if (pool === undefined) {
    log('info', `unknown tenant refused: ${tenant.slice(0, 64)}`);
    return reject(403, 'unknown tenant');
  }
  return {
    tag: 'allow',
    val: {
      upstream: pool,
      limitKey: tenant,
      setHeaders: [[settings.header, tenant]],
      removeHeaders: [],
      responseHeaders: [],
      attributes: [['tenant', tenant]],
    },
  };
}
