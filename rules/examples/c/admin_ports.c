/*
 * Example rule in C: flags remote-administration ports.
 * Build: clang-14 --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--strip-all \
 *          -I sdk -o rules/examples/admin_ports.wasm rules/examples/c/admin_ports.c
 * (scripts/build-rules does this).
 */
#include "enrichd.h"

/* Declared once (ABI 1.1): written by id, in this order. */
enum { SSH, TELNET, RDP, VNC, ADMIN_PORT };
ENRICHD_TEXTS(ENRICHD_TEXT("ssh"), ENRICHD_TEXT("telnet"), ENRICHD_TEXT("rdp"), ENRICHD_TEXT("vnc"),
              ENRICHD_TEXT("admin-port"))

static void rule(const enrichd_event *ev, enrichd_out *out) {
  int32_t score = 0;
  if (enrichd_has(ev, ENRICHD_DST_PORT)) {
    switch (ev->dst_port) {
      case 22: score = 40; enrichd_reason_id(out, SSH); break;
      case 23: score = 70; enrichd_reason_id(out, TELNET); break;
      case 3389: score = 60; enrichd_reason_id(out, RDP); break;
      case 5900: score = 60; enrichd_reason_id(out, VNC); break;
      default: break;
    }
  }
  if (score > 0) enrichd_tag_id(out, ADMIN_PORT);
  enrichd_score(out, score);
}

ENRICHD_EXPORT(rule)
