// Test plugin (world `all-kinds`): misbehaves on request, to test the host's limits.
// Built by plugins/build.sh into hostile-c.wasm.
//
// Config `mode` picks the behaviour of EVERY exported function:
//   ok (or missing)  decide-flow/decide-dns allow, patch returns no operations, resolve returns
//                    "ok", receive returns ok.
//   trap             traps (unreachable).
//   loop             spins forever (the host's deadline / epoch interruption must stop it).
//   membomb          allocates and touches 1 MiB blocks forever; traps if malloc fails (the
//                    host's memory limit must stop it).
//   escape           patch returns a write to "/etc/../../outside" followed by a mkdir (the host
//                    must refuse the whole patch); the other functions behave as `ok`.
//   huge             every function answers with a 10 MiB string: decide-flow and decide-dns
//                    deny with a 10 MiB reason, patch, resolve and receive return a 10 MiB error.
// Any other mode behaves as `ok`.

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "all_kinds.h"

typedef all_kinds_string_t str_t;

enum mode { MODE_OK, MODE_TRAP, MODE_LOOP, MODE_MEMBOMB, MODE_ESCAPE, MODE_HUGE };

static bool str_eq(const str_t *s, const char *lit) {
  size_t n = strlen(lit);
  return s->len == n && memcmp(s->ptr, lit, n) == 0;
}

// The mode, read once per instance.
static enum mode mode(void) {
  static bool loaded;
  static enum mode m = MODE_OK;
  if (loaded) return m;
  loaded = true;
  all_kinds_list_tuple2_string_string_t cfg;
  orchestrator_plugin_host_config(&cfg);
  for (size_t i = 0; i < cfg.len; i++) {
    if (!str_eq(&cfg.ptr[i].f0, "mode")) continue;
    const str_t *v = &cfg.ptr[i].f1;
    if (str_eq(v, "trap")) m = MODE_TRAP;
    else if (str_eq(v, "loop")) m = MODE_LOOP;
    else if (str_eq(v, "membomb")) m = MODE_MEMBOMB;
    else if (str_eq(v, "escape")) m = MODE_ESCAPE;
    else if (str_eq(v, "huge")) m = MODE_HUGE;
  }
  all_kinds_list_tuple2_string_string_free(&cfg);
  return m;
}

// Runs the modes that never return; returns for the others.
static enum mode misbehave(void) {
  enum mode m = mode();
  switch (m) {
    case MODE_TRAP:
      __builtin_trap();
    case MODE_LOOP: {
      volatile uint64_t counter = 0;  // volatile: the loop cannot be optimised away
      for (;;) counter++;
    }
    case MODE_MEMBOMB:
      for (;;) {
        volatile uint8_t *block = malloc(1 << 20);
        if (!block) __builtin_trap();
        for (size_t i = 0; i < (1 << 20); i += 4096) block[i] = 1;  // touch every page
      }
    default:
      return m;
  }
}

// A heap string (the bindings' post-return functions free returned strings).
static void dup(str_t *out, const char *s) { all_kinds_string_dup(out, s); }

static void huge(str_t *out) {
  size_t n = 10 << 20;
  out->ptr = malloc(n);
  if (!out->ptr) __builtin_trap();
  memset(out->ptr, 'x', n);
  out->len = n;
}

void exports_orchestrator_plugin_network_policy_decide_flow(
    exports_orchestrator_plugin_network_policy_flow_t *flow,
    exports_orchestrator_plugin_network_policy_decision_t *ret) {
  exports_orchestrator_plugin_network_policy_flow_free(flow);
  ret->cache_seconds = 0;
  ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_ACTION_ALLOW;
  if (misbehave() == MODE_HUGE) {
    ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_ACTION_DENY;
    huge(&ret->action.val.deny);
  }
}

void exports_orchestrator_plugin_network_policy_decide_dns(
    exports_orchestrator_plugin_network_policy_dns_query_t *query,
    exports_orchestrator_plugin_network_policy_dns_decision_t *ret) {
  exports_orchestrator_plugin_network_policy_dns_query_free(query);
  ret->cache_seconds = 0;
  ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_DNS_ACTION_ALLOW;
  if (misbehave() == MODE_HUGE) {
    ret->action.tag = EXPORTS_ORCHESTRATOR_PLUGIN_NETWORK_POLICY_DNS_ACTION_DENY;
    huge(&ret->action.val.deny);
  }
}

bool exports_orchestrator_plugin_rootfs_patch_patch(
    exports_orchestrator_plugin_rootfs_patch_sandbox_info_t *sandbox,
    exports_orchestrator_plugin_rootfs_patch_image_info_t *image,
    exports_orchestrator_plugin_rootfs_patch_list_operation_t *ret, all_kinds_string_t *err) {
  exports_orchestrator_plugin_rootfs_patch_sandbox_info_free(sandbox);
  exports_orchestrator_plugin_rootfs_patch_image_info_free(image);
  ret->ptr = NULL;
  ret->len = 0;
  switch (misbehave()) {
    case MODE_HUGE:
      huge(err);
      return false;
    case MODE_ESCAPE: {
      exports_orchestrator_plugin_rootfs_patch_operation_t *ops = calloc(2, sizeof *ops);
      if (!ops) __builtin_trap();
      ops[0].tag = EXPORTS_ORCHESTRATOR_PLUGIN_ROOTFS_PATCH_OPERATION_WRITE;
      dup(&ops[0].val.write.path, "/etc/../../outside");
      const char *contents = "outside the root\n";
      all_kinds_string_t c;
      dup(&c, contents);
      ops[0].val.write.contents.ptr = c.ptr;
      ops[0].val.write.contents.len = c.len;
      ops[0].val.write.mode = 0644;
      ops[1].tag = EXPORTS_ORCHESTRATOR_PLUGIN_ROOTFS_PATCH_OPERATION_MKDIR;
      dup(&ops[1].val.mkdir.path, "/opt/hostile");
      ops[1].val.mkdir.mode = 0755;
      ret->ptr = ops;
      ret->len = 2;
      return true;
    }
    default:
      return true;
  }
}

bool exports_orchestrator_plugin_secret_provider_resolve(
    exports_orchestrator_plugin_secret_provider_sandbox_info_t *sandbox, all_kinds_string_t *key,
    all_kinds_string_t *ret, all_kinds_string_t *err) {
  exports_orchestrator_plugin_secret_provider_sandbox_info_free(sandbox);
  all_kinds_string_free(key);
  if (misbehave() == MODE_HUGE) {
    huge(err);
    return false;
  }
  dup(ret, "ok");
  return true;
}

bool exports_orchestrator_plugin_metrics_sink_receive(
    exports_orchestrator_plugin_metrics_sink_list_sample_t *samples, all_kinds_string_t *err) {
  exports_orchestrator_plugin_metrics_sink_list_sample_free(samples);
  if (misbehave() == MODE_HUGE) {
    huge(err);
    return false;
  }
  return true;
}

// The 0.1.1 interface: the host prefers it, so the same misbehaviour must show through it.
bool exports_orchestrator_plugin_metrics_sink_v2_receive(
    exports_orchestrator_plugin_metrics_sink_v2_list_sample_t *samples, all_kinds_string_t *err) {
  exports_orchestrator_plugin_metrics_sink_v2_list_sample_free(samples);
  if (misbehave() == MODE_HUGE) {
    huge(err);
    return false;
  }
  return true;
}
