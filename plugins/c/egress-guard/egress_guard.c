// egress-guard: an example network policy plugin (world `network-policy-plugin`), in C.
// The same rule as plugins/rust/egress-guard (the reference), plugins/python/egress-guard and
// plugins/js/egress-guard; keep them in step.
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
// Build: plugins/build.sh (bindings come from `wit-bindgen c wit --world network-policy-plugin`).

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "network_policy_plugin.h"

typedef network_policy_plugin_string_t str_t;
typedef exports_orchestrator_plugin_network_policy_flow_t flow_t;
typedef exports_orchestrator_plugin_network_policy_decision_t decision_t;
typedef exports_orchestrator_plugin_network_policy_dns_query_t dns_query_t;
typedef exports_orchestrator_plugin_network_policy_dns_decision_t dns_decision_t;

// ---- Configuration, parsed on the first call and kept for the instance's lifetime ----------

#define MAX_ITEMS 64

static struct {
  bool loaded;
  bool block_private;
  size_t n_ports;  // 0: any port
  uint16_t ports[MAX_ITEMS];
  size_t n_domains;  // 0: any domain
  char *domains[MAX_ITEMS];
  uint32_t cache_seconds;
} cfg;

static void log_warn(const char *fmt, const char *arg) {
  char line[512];
  snprintf(line, sizeof line, fmt, arg);
  str_t msg;
  network_policy_plugin_string_set(&msg, line);  // borrowed: the host copies it
  orchestrator_plugin_host_log(ORCHESTRATOR_PLUGIN_HOST_LEVEL_WARN, &msg);
}

// A NUL-terminated copy of a WIT string, ASCII letters lower-cased when `lower`.
static char *cstr(const str_t *s, bool lower) {
  char *c = malloc(s->len + 1);
  if (!c) __builtin_trap();
  for (size_t i = 0; i < s->len; i++) c[i] = lower ? (char)tolower(s->ptr[i]) : (char)s->ptr[i];
  c[s->len] = 0;
  return c;
}

static bool str_eq(const str_t *s, const char *lit) {
  size_t n = strlen(lit);
  return s->len == n && memcmp(s->ptr, lit, n) == 0;
}

// Removes leading and trailing white space, in place.
static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *end = s + strlen(s);
  while (end > s && isspace((unsigned char)end[-1])) *--end = 0;
  return s;
}

// Splits a comma-separated value in place; calls `item` for every non-empty, trimmed entry.
static void for_each_item(char *list, void (*item)(char *)) {
  for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
    tok = trim(tok);
    if (*tok) item(tok);
  }
}

// An unsigned decimal number ("+" allowed in front, like Rust's parse), at most `max`.
static bool parse_uint(const char *s, uint64_t max, uint64_t *out) {
  uint64_t n = 0;
  if (*s == '+') s++;
  if (!*s) return false;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    n = n * 10 + (uint64_t)(*s - '0');
    if (n > max) return false;
  }
  *out = n;
  return true;
}

static void add_port(char *s) {
  uint64_t p;
  if (!parse_uint(s, 65535, &p)) {
    log_warn("ignoring invalid port \"%s\"", s);
    return;
  }
  if (cfg.n_ports < MAX_ITEMS) cfg.ports[cfg.n_ports++] = (uint16_t)p;
}

static void add_domain(char *s) {
  if (cfg.n_domains < MAX_ITEMS) cfg.domains[cfg.n_domains++] = strdup(s);
}

static void load_config(void) {
  if (cfg.loaded) return;
  cfg.loaded = true;
  cfg.block_private = true;
  cfg.cache_seconds = 60;

  network_policy_plugin_list_tuple2_string_string_t list;
  orchestrator_plugin_host_config(&list);
  for (size_t i = 0; i < list.len; i++) {
    str_t *key = &list.ptr[i].f0, *value = &list.ptr[i].f1;
    if (str_eq(key, "block-private")) {
      cfg.block_private = !str_eq(value, "false");
    } else if (str_eq(key, "ports") || str_eq(key, "allow-domains")) {
      char *v = cstr(value, true);
      for_each_item(v, str_eq(key, "ports") ? add_port : add_domain);
      free(v);
    } else if (str_eq(key, "cache-seconds")) {
      char *v = cstr(value, false);
      uint64_t n;
      if (parse_uint(v, UINT32_MAX, &n))
        cfg.cache_seconds = (uint32_t)n;
      else
        log_warn("invalid cache-seconds \"%s\", using 60", v);
      free(v);
    }
  }
  network_policy_plugin_list_tuple2_string_string_free(&list);
}

// ---- The checks ----------------------------------------------------------------------------

static bool private_v4(uint8_t a, uint8_t b) {
  return a == 0                                // 0.0.0.0/8
         || a == 10                            // 10.0.0.0/8
         || (a == 100 && (b & 0xc0) == 64)     // 100.64.0.0/10
         || a == 127                           // 127.0.0.0/8
         || (a == 169 && b == 254)             // 169.254.0.0/16
         || (a == 172 && (b & 0xf0) == 16)     // 172.16.0.0/12
         || (a == 192 && b == 168);            // 192.168.0.0/16
}

static bool private_address(const orchestrator_plugin_types_ip_address_t *ip) {
  if (ip->tag == ORCHESTRATOR_PLUGIN_TYPES_IP_ADDRESS_IPV4)
    return private_v4(ip->val.ipv4.f0, ip->val.ipv4.f1);
  const typeof(ip->val.ipv6) *v6 = &ip->val.ipv6;
  const uint16_t g[8] = {v6->f0, v6->f1, v6->f2, v6->f3, v6->f4, v6->f5, v6->f6, v6->f7};
  bool first_five_zero = !g[0] && !g[1] && !g[2] && !g[3] && !g[4];
  if (first_five_zero && g[5] == 0xffff)  // ::ffff:a.b.c.d, IPv4-mapped
    return private_v4(g[6] >> 8, g[6] & 0xff);
  if (first_five_zero && !g[5] && !g[6] && (g[7] == 0 || g[7] == 1))  // :: and ::1
    return true;
  return (g[0] & 0xfe00) == 0xfc00     // fc00::/7, unique local
         || (g[0] & 0xffc0) == 0xfe80;  // fe80::/10, link-local
}

// Compares the last `m` bytes of `name` (any case) with the lower-case `suffix`.
static bool ends_with(const str_t *name, const char *suffix, size_t m) {
  if (name->len < m) return false;
  const uint8_t *tail = name->ptr + name->len - m;
  for (size_t i = 0; i < m; i++)
    if (tolower(tail[i]) != (unsigned char)suffix[i]) return false;
  return true;
}

// `domain` equals an allowed suffix or ends with "." + suffix, ignoring ASCII case. Lengths
// come from the WIT string: a NUL byte inside a name cannot cut it short.
static bool domain_allowed(const str_t *domain) {
  for (size_t i = 0; i < cfg.n_domains; i++) {
    const char *s = cfg.domains[i];
    size_t m = strlen(s);
    if (!ends_with(domain, s, m)) continue;
    if (domain->len == m || domain->ptr[domain->len - m - 1] == '.') return true;
  }
  return false;
}

static bool has_label(const orchestrator_plugin_types_sandbox_info_t *sb, const char *k, const char *v) {
  for (size_t i = 0; i < sb->labels.len; i++)
    if (str_eq(&sb->labels.ptr[i].f0, k) && str_eq(&sb->labels.ptr[i].f1, v)) return true;
  return false;
}

// A deny reason: "<before><what><after>". Returned strings are freed by the bindings'
// post-return function, so they are always heap-allocated.
static void reason(str_t *out, const char *before, const str_t *what, const char *after) {
  size_t a = strlen(before), w = what ? what->len : 0, b = strlen(after);
  out->len = a + w + b;
  out->ptr = malloc(out->len);
  if (!out->ptr) __builtin_trap();
  memcpy(out->ptr, before, a);
  if (w) memcpy(out->ptr + a, what->ptr, w);
  memcpy(out->ptr + a + w, after, b);
}

// ---- Exports -------------------------------------------------------------------------------

void exports_orchestrator_plugin_network_policy_decide_flow(flow_t *flow, decision_t *ret) {
  load_config();
  ret->cache_seconds = cfg.cache_seconds;
  ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_ACTION_DENY;
  str_t *deny = &ret->action.val.deny;

  bool port_ok = cfg.n_ports == 0;
  for (size_t i = 0; i < cfg.n_ports; i++) port_ok |= cfg.ports[i] == flow->port;

  if (cfg.block_private && private_address(&flow->destination)) {
    reason(deny, "private address", NULL, "");
  } else if (!port_ok) {
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)flow->port);
    str_t p = {(uint8_t *)port, strlen(port)};
    reason(deny, "port ", &p, " not allowed");
  } else if (cfg.n_domains == 0 || has_label(&flow->sandbox, "egress", "open")) {
    ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_ACTION_ALLOW;
  } else if (!flow->domain.is_some) {
    reason(deny, "no domain known", NULL, "");
  } else if (!domain_allowed(&flow->domain.val)) {
    reason(deny, "domain ", &flow->domain.val, " not allowed");
  } else {
    ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_ACTION_ALLOW;
  }
  // Arguments belong to the callee in the C bindings.
  exports_orchestrator_plugin_network_policy_flow_free(flow);
}

void exports_orchestrator_plugin_network_policy_decide_dns(dns_query_t *query, dns_decision_t *ret) {
  load_config();
  ret->cache_seconds = cfg.cache_seconds;
  ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_DNS_ACTION_ALLOW;
  if (cfg.n_domains > 0 && !domain_allowed(&query->name)) {
    ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_DNS_ACTION_DENY;
    reason(&ret->action.val.deny, "domain ", &query->name, " not allowed");
  }
  exports_orchestrator_plugin_network_policy_dns_query_free(query);
}
