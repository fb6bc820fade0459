// log-decisions: a network policy that allows everything and logs every flow and DNS query
// it is asked about (one line each, through the orchestrator's log). Put it first in a
// sandbox's `network.plugins` to audit what the sandbox reaches, before or beside a policy
// that decides. Config: `cache-seconds` (default 0: every flow is logged, none is cached).
import { config, log } from 'orchestrator:plugin/host@0.1.1';

let cacheSeconds = null;
function cache() {
  if (cacheSeconds === null) {
    const value = new Map(config()).get('cache-seconds') ?? '0';
    cacheSeconds = /^[0-9]+$/.test(value) ? Number(value) : 0;
  }
  return cacheSeconds;
}

function address(ip) {
  if (ip.tag === 'ipv4') return ip.val.join('.');
  return ip.val.map((g) => g.toString(16)).join(':');
}

export const networkPolicy = {
  decideFlow(flow) {
    const labels = flow.sandbox.labels.map(([k, v]) => `${k}=${v}`).join(',');
    log('info', `flow sandbox=${flow.sandbox.name} labels=${labels || '-'} ${flow.protocol} ${address(flow.destination)}:${flow.port} domain=${flow.domain ?? '-'}`);
    return { action: { tag: 'allow' }, cacheSeconds: cache() };
  },
  decideDns(query) {
    log('info', `dns sandbox=${query.sandbox.name} ${query.recordType} ${query.name}`);
    return { action: { tag: 'allow' }, cacheSeconds: cache() };
  },
};
