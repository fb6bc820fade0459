// Test plugin (world `rootfs-patch-plugin`): one operation of every kind, in a fixed order.
// Built by plugins/build.sh into test-patch-js.wasm.
//
// Config:
//   greeting = TEXT   adds the line TEXT to /opt/patched/hello.txt
//   fail = "true"     patch returns the error "patcher refused: fail=true"
//   escape = "true"   patch returns a write to "/../../escaped.txt" (the host must refuse it)

import { config } from 'orchestrator:plugin/host@0.1.1';

const utf8 = (s) => new TextEncoder().encode(s);

export const rootfsPatch = {
  patch(sandbox, _image) {
    const cfg = new Map(config());
    if (cfg.get('fail') === 'true') {
      // A thrown value becomes the `err` of result<list<operation>, string>.
      throw 'patcher refused: fail=true';
    }
    if (cfg.get('escape') === 'true') {
      return [{ tag: 'write', val: { path: '/../../escaped.txt', contents: utf8('escaped\n'), mode: 0o644 } }];
    }
    let hello = `hello from ${sandbox.name}\n`;
    if (cfg.has('greeting')) hello += `${cfg.get('greeting')}\n`;
    return [
      { tag: 'mkdir', val: { path: '/opt/patched', mode: 0o755 } },
      { tag: 'write', val: { path: '/opt/patched/hello.txt', contents: utf8(hello), mode: 0o644 } },
      { tag: 'append', val: { path: '/etc/hosts', contents: utf8('10.9.8.7 patched.internal\n') } },
      { tag: 'symlink', val: { path: '/opt/patched/link', target: 'hello.txt' } },
      { tag: 'chmod', val: { path: '/opt/patched/hello.txt', mode: 0o600 } },
      { tag: 'remove', val: '/etc/motd' },
    ];
  },
};
