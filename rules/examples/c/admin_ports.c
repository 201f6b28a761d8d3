/*
 * Example rule in C: flags remote-administration ports.
 * Build: clang-14 --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--strip-all \
 *          -I sdk -o rules/examples/admin_ports.wasm rules/examples/c/admin_ports.c
 * (scripts/build-rules does this).
 */
#include "enrichd.h"

static void rule(const enrichd_event *ev, enrichd_out *out) {
  int32_t score = 0;
  if (enrichd_has(ev, ENRICHD_DST_PORT)) {
    switch (ev->dst_port) {
      case 22: score = 40; enrichd_reason(out, "ssh"); break;
      case 23: score = 70; enrichd_reason(out, "telnet"); break;
      case 3389: score = 60; enrichd_reason(out, "rdp"); break;
      case 5900: score = 60; enrichd_reason(out, "vnc"); break;
      default: break;
    }
  }
  if (score > 0) enrichd_tag(out, "admin-port");
  enrichd_score(out, score);
}

ENRICHD_EXPORT(rule)
