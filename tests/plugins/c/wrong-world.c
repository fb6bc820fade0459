// Test plugin: a valid component that targets no orchestrator world (see wrong-world.wit).
// Built by plugins/build.sh into wrong-world-c.wasm; the host must refuse to load it.

#include <stdio.h>
#include <string.h>

#include "greeter.h"

void exports_greeter_greet(greeter_string_t *name, greeter_string_t *ret) {
  char buf[256];
  snprintf(buf, sizeof buf, "hello, %.*s", (int)name->len, (const char *)name->ptr);
  greeter_string_free(name);
  greeter_string_dup(ret, buf);  // freed by the bindings' post-return function
}
