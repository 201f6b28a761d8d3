/*
 * enrichd guest ABI v1.1 for C (clang --target=wasm32, no libc needed).
 * The byte layout is specified in ABI.md; these structs mirror it and the
 * static asserts pin the offsets.
 *
 * A rule defines `void rule(const enrichd_event *ev, enrichd_out *out)` and
 * writes ENRICHD_EXPORT(rule) once.
 */
#ifndef ENRICHD_H
#define ENRICHD_H

#include <stdint.h>
#include <stddef.h>

#define ENRICHD_ABI_VERSION ((1u << 16) | 1u)
#define ENRICHD_MAX_BATCH 256
#define ENRICHD_OUT_CAPACITY 65536

enum {
  ENRICHD_SRC_IP = 1u << 0, ENRICHD_DST_IP = 1u << 1, ENRICHD_TS = 1u << 2,
  ENRICHD_BYTES = 1u << 3, ENRICHD_ORIG_BYTES = 1u << 4, ENRICHD_RESP_BYTES = 1u << 5,
  ENRICHD_PACKETS = 1u << 6, ENRICHD_DURATION = 1u << 7, ENRICHD_SRC_PORT = 1u << 8,
  ENRICHD_DST_PORT = 1u << 9, ENRICHD_PROTO = 1u << 10, ENRICHD_SRC_COUNTRY = 1u << 11,
  ENRICHD_DST_COUNTRY = 1u << 12, ENRICHD_SRC_ASN = 1u << 13, ENRICHD_DST_ASN = 1u << 14,
  ENRICHD_SRC_IPV4 = 1u << 15, ENRICHD_DST_IPV4 = 1u << 16
};

enum {
  ENRICHD_SCORE = 1, ENRICHD_REASON = 2, ENRICHD_TAG = 3, ENRICHD_FIELD = 4,
  ENRICHD_REASON_ID = 5, ENRICHD_TAG_ID = 6 /* ABI 1.1: a declared text, by id */
};

typedef struct {
  uint8_t src_ip[16];      /* 0 */
  uint8_t dst_ip[16];      /* 16 */
  double ts;               /* 32 */
  uint64_t bytes;          /* 40 */
  uint64_t orig_bytes;     /* 48 */
  uint64_t resp_bytes;     /* 56 */
  uint64_t packets;        /* 64 */
  double duration;         /* 72 */
  uint32_t present;        /* 80 */
  uint32_t src_asn;        /* 84 */
  uint32_t dst_asn;        /* 88 */
  uint32_t ti_matches;     /* 92 */
  uint16_t src_port;       /* 96 */
  uint16_t dst_port;       /* 98 */
  uint8_t src_country[2];  /* 100 */
  uint8_t dst_country[2];  /* 102 */
  uint8_t proto;           /* 104 */
  uint8_t reserved[7];     /* 105 */
} enrichd_event;

_Static_assert(sizeof(enrichd_event) == 112, "event record is 112 bytes");
_Static_assert(offsetof(enrichd_event, present) == 80, "present at 80");
_Static_assert(offsetof(enrichd_event, src_port) == 96, "src_port at 96");
_Static_assert(offsetof(enrichd_event, proto) == 104, "proto at 104");

typedef struct {
  enrichd_event events[ENRICHD_MAX_BATCH]; /* 0 */
  uint32_t out_len;                        /* 28672 */
  uint32_t reserved;                       /* 28676 */
  uint8_t out[ENRICHD_OUT_CAPACITY];       /* 28680 */
} enrichd_io;

_Static_assert(offsetof(enrichd_io, out_len) == 28672, "out_len at 28672");
_Static_assert(offsetof(enrichd_io, out) == 28680, "out at 28680");

typedef struct {
  enrichd_io *io;
  uint16_t event;
  int overflow;
} enrichd_out;

static inline void enrichd_entry(enrichd_out *o, uint8_t kind, const void *data, uint32_t len) {
  uint32_t at = o->io->out_len;
  if (len > 0xffff || at + 5 + len > ENRICHD_OUT_CAPACITY) { o->overflow = 1; return; }
  uint8_t *p = o->io->out + at;
  p[0] = (uint8_t)o->event; p[1] = (uint8_t)(o->event >> 8); p[2] = kind;
  p[3] = (uint8_t)len; p[4] = (uint8_t)(len >> 8);
  for (uint32_t i = 0; i < len; i++) p[5 + i] = ((const uint8_t *)data)[i];
  o->io->out_len = at + 5 + len;
}

static inline uint32_t enrichd_strlen(const char *s) { uint32_t n = 0; while (s[n]) n++; return n; }
static inline void enrichd_score(enrichd_out *o, int32_t score) {
  uint8_t b[4] = {(uint8_t)score, (uint8_t)(score >> 8), (uint8_t)(score >> 16), (uint8_t)(score >> 24)};
  enrichd_entry(o, ENRICHD_SCORE, b, 4);
}
static inline void enrichd_reason(enrichd_out *o, const char *r) { enrichd_entry(o, ENRICHD_REASON, r, enrichd_strlen(r)); }
static inline void enrichd_tag(enrichd_out *o, const char *t) { enrichd_entry(o, ENRICHD_TAG, t, enrichd_strlen(t)); }
/* ABI 1.1: reasons and tags declared once per module, written by id (one
 * byte per event instead of the text). List the texts once with
 * ENRICHD_TEXTS(ENRICHD_TEXT("a"), ENRICHD_TEXT("b")); text i has id i (an
 * enum in the same order names them). At most 255, of at most 1,024 bytes
 * each and 16 KiB in all (a bigger table is a load error). */
typedef struct { const char *ptr; uint32_t len; } enrichd_text_ref;
#define ENRICHD_TEXT(s) { s, sizeof(s) - 1 }
#define ENRICHD_TEXTS(...)                                                          \
  static const struct {                                                             \
    uint32_t count;                                                                 \
    enrichd_text_ref texts[sizeof((enrichd_text_ref[]){__VA_ARGS__}) / sizeof(enrichd_text_ref)]; \
  } enrichd_text_table = {                                                          \
    sizeof((enrichd_text_ref[]){__VA_ARGS__}) / sizeof(enrichd_text_ref), {__VA_ARGS__} \
  };                                                                                \
  __attribute__((export_name("enrichd_texts"))) int32_t enrichd_texts(void) {      \
    return (int32_t)(uintptr_t)&enrichd_text_table;                                 \
  }
static inline void enrichd_reason_id(enrichd_out *o, uint8_t id) { enrichd_entry(o, ENRICHD_REASON_ID, &id, 1); }
static inline void enrichd_tag_id(enrichd_out *o, uint8_t id) { enrichd_entry(o, ENRICHD_TAG_ID, &id, 1); }
static inline int enrichd_has(const enrichd_event *e, uint32_t bit) { return (e->present & bit) != 0; }

#define ENRICHD_EXPORT(fn)                                                          \
  static enrichd_io enrichd_io_area;                                                \
  __attribute__((export_name("enrichd_abi_version"))) int32_t enrichd_abi_version(void) { \
    return (int32_t)ENRICHD_ABI_VERSION;                                            \
  }                                                                                 \
  __attribute__((export_name("enrichd_io"))) int32_t enrichd_io_addr(void) {        \
    return (int32_t)(uintptr_t)&enrichd_io_area;                                    \
  }                                                                                 \
  __attribute__((export_name("enrichd_process"))) int32_t enrichd_process(int32_t n) { \
    enrichd_out out = {&enrichd_io_area, 0, 0};                                     \
    enrichd_io_area.out_len = 0;                                                    \
    if (n > ENRICHD_MAX_BATCH) n = ENRICHD_MAX_BATCH;                               \
    for (int32_t i = 0; i < n; i++) {                                               \
      out.event = (uint16_t)i;                                                      \
      fn(&enrichd_io_area.events[i], &out);                                         \
    }                                                                               \
    return out.overflow;                                                            \
  }

#endif
