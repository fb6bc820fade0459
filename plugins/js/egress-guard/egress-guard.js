// egress-guard: an example network policy plugin (world `network-policy-plugin`), in JavaScript.
// The same rule as plugins/rust/egress-guard (the reference), plugins/c/egress-guard and
// plugins/python/egress-guard; keep them in step.
//
// Configuration (the Plugin resource's spec.config, read once per instance):
//   block-private  anything but "false" (default "true"): deny loopback, private, link-local,
//                  CGNAT and unspecified destinations, and their IPv4-mapped IPv6 forms.
//   ports          comma-separated allowed ports, e.g. "80,443"; default: any port.
//   allow-domains  comma-separated domain suffixes, e.g. "example.com,pkg.dev" (case does not
//                  matter); a domain is allowed when it equals a suffix or ends with "." + suffix.
//                  Default: any domain, and flows without a known domain are fine too.
//   cache-seconds  how long the host may reuse a decision (default 60).
// Entries that do not parse (a port "http", cache-seconds "soon") are ignored, with a warning.
// A sandbox labelled `egress=open` skips the domain check of flows (not the private check).
// Checks run in this order: private address, port, domain.
//
// Build: plugins/build.sh, i.e.
//   componentize-js egress-guard.js --wit wit --world-name network-policy-plugin \
//     --disable http fetch-event --preview2-adapter $WASI_ADAPTER_REACTOR -o OUT
// WIT values in JS: enums are strings ('info'), variants { tag: 'deny', val: '...' },
// option<string> is a string or undefined, tuples are arrays.

import { config as hostConfig, log } from 'orchestrator:plugin/host@0.1.1';

// An unsigned decimal number, "+" allowed in front (as Rust's parse).
const isNumber = (s) => /^\+?[0-9]+$/.test(s);
const asciiLower = (s) => s.replace(/[A-Z]/g, (c) => c.toLowerCase());
// Comma-separated entries, trimmed, lower-cased (ASCII), without empty ones.
const splitList = (v) => v.split(',').map((s) => asciiLower(s.trim())).filter((s) => s !== '');

function parseConfig(pairs) {
  const values = new Map(pairs);
  const cfg = {
    blockPrivate: (values.get('block-private') ?? 'true') !== 'false',
    ports: new Set(),
    domains: splitList(values.get('allow-domains') ?? ''),
    cacheSeconds: 60,
  };
  for (const item of splitList(values.get('ports') ?? '')) {
    if (isNumber(item) && Number(item) <= 65535) cfg.ports.add(Number(item));
    else log('warn', `ignoring invalid port "${item}"`);
  }
  const raw = values.get('cache-seconds');
  if (raw !== undefined) {
    if (isNumber(raw) && Number(raw) <= 0xffffffff) cfg.cacheSeconds = Number(raw);
    else log('warn', `invalid cache-seconds "${raw}", using 60`);
  }
  return cfg;
}

// Read on the first call, not at the module's top level: that runs at build time
// (componentize-js pre-initialises the module), where there is no host to ask.
let cached;
const config = () => (cached ??= parseConfig(hostConfig()));

function privateV4(a, b) {
  return (
    a === 0 || // 0.0.0.0/8
    a === 10 || // 10.0.0.0/8
    (a === 100 && (b & 0xc0) === 64) || // 100.64.0.0/10
    a === 127 || // 127.0.0.0/8
    (a === 169 && b === 254) || // 169.254.0.0/16
    (a === 172 && (b & 0xf0) === 16) || // 172.16.0.0/12
    (a === 192 && b === 168) // 192.168.0.0/16
  );
}

function privateAddress(ip) {
  if (ip.tag === 'ipv4') return privateV4(ip.val[0], ip.val[1]);
  const g = ip.val;
  const firstFiveZero = g.slice(0, 5).every((x) => x === 0);
  if (firstFiveZero && g[5] === 0xffff) return privateV4(g[6] >> 8, g[6] & 0xff); // ::ffff:a.b.c.d
  if (firstFiveZero && g[5] === 0 && g[6] === 0 && (g[7] === 0 || g[7] === 1)) return true; // ::, ::1
  return (g[0] & 0xfe00) === 0xfc00 || (g[0] & 0xffc0) === 0xfe80; // fc00::/7, fe80::/10
}

const domainAllowed = (cfg, domain) => {
  const name = asciiLower(domain);
  return cfg.domains.some((s) => name === s || name.endsWith('.' + s));
};
const deny = (reason) => ({ tag: 'deny', val: reason });

export const networkPolicy = {
  decideFlow(flow) {
    const cfg = config();
    let action = { tag: 'allow' };
    const open = flow.sandbox.labels.some(([k, v]) => k === 'egress' && v === 'open');
    if (cfg.blockPrivate && privateAddress(flow.destination)) {
      action = deny('private address');
    } else if (cfg.ports.size > 0 && !cfg.ports.has(flow.port)) {
      action = deny(`port ${flow.port} not allowed`);
    } else if (cfg.domains.length > 0 && !open) {
      if (flow.domain === undefined || flow.domain === null) action = deny('no domain known');
      else if (!domainAllowed(cfg, flow.domain)) action = deny(`domain ${flow.domain} not allowed`);
    }
    return { action, cacheSeconds: cfg.cacheSeconds };
  },

  decideDns(query) {
    const cfg = config();
    const action =
      cfg.domains.length > 0 && !domainAllowed(cfg, query.name)
        ? deny(`domain ${query.name} not allowed`)
        : { tag: 'allow' };
    return { action, cacheSeconds: cfg.cacheSeconds };
  },
};
