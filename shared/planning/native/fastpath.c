/* The fast path's inner loops in C: CSV records cut into fields, emails checked and keyed, rows
 * fingerprinted (the plan pass), and profiles written as JSON (a push). Loaded with ctypes by
 * shared/planning/native/__init__.py; no Python API, so it builds with a plain C compiler.
 *
 * Every function does only what it is certain to do exactly as the row-by-row path (the csv module,
 * ProfileMapper) does. Row-level problems (a wrong width, bad bytes, a missing or invalid email) are
 * decided here with the row path's reasons; a record that only the row path can be sure of is marked
 * for it, and what the scan cannot frame is reported with where it starts (the caller has the csv module
 * read that record, and scans on after it). -1 leaves the whole block to the other paths. Tests compare
 * the three.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The SHA-256 of the source this was built from (the Makefile passes it): the loader refuses a library
 * built from another version, whose functions may take other arguments. */
#ifndef SOURCE_SHA256
#define SOURCE_SHA256 ""
#endif
const char *fastpath_source(void) { return SOURCE_SHA256; }

/* ---- XXH3-64, seed 0, inputs of up to 240 bytes (xxhash.h's short and mid-size paths) ---- */

static const uint8_t SECRET[192] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};
#define PRIME32_1 0x9E3779B1U
#define PRIME64_1 0x9E3779B185EBCA87ULL
#define PRIME64_2 0xC2B2AE3D27D4EB4FULL
#define PRIME64_3 0x165667B19E3779F9ULL
#define PRIME_MX1 0x165667919E3779F9ULL
#define PRIME_MX2 0x9FB21C651E98DF25ULL
#define HASH_MAX 240 /* longer inputs take xxhash's long path: the caller's fallback hashes those */

static inline uint64_t le64(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}
static inline uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t swap64(uint64_t x) { return __builtin_bswap64(x); }
static inline uint64_t fold64(uint64_t a, uint64_t b) {
    __uint128_t p = (__uint128_t)a * b;
    return (uint64_t)p ^ (uint64_t)(p >> 64);
}
static inline uint64_t xxh64_avalanche(uint64_t h) {
    h ^= h >> 33;
    h *= PRIME64_2;
    h ^= h >> 29;
    h *= PRIME64_3;
    return h ^ (h >> 32);
}
static inline uint64_t xxh3_avalanche(uint64_t h) {
    h ^= h >> 37;
    h *= PRIME_MX1;
    return h ^ (h >> 32);
}
static inline uint64_t mix16(const uint8_t *in, const uint8_t *sec) {
    return fold64(le64(in) ^ le64(sec), le64(in + 8) ^ le64(sec + 8));
}

uint64_t xxh3_64(const uint8_t *in, size_t len) {
    if (len == 0) return xxh64_avalanche(le64(SECRET + 56) ^ le64(SECRET + 64));
    if (len <= 3) {
        uint32_t combined = (uint32_t)in[0] << 16 | (uint32_t)in[len >> 1] << 24 | (uint32_t)in[len - 1] |
                            (uint32_t)len << 8;
        return xxh64_avalanche((uint64_t)combined ^ (uint64_t)(le32(SECRET) ^ le32(SECRET + 4)));
    }
    if (len <= 8) {
        uint64_t keyed = ((uint64_t)le32(in + len - 4) + ((uint64_t)le32(in) << 32)) ^
                         (le64(SECRET + 8) ^ le64(SECRET + 16));
        keyed ^= rotl64(keyed, 49) ^ rotl64(keyed, 24);
        keyed *= PRIME_MX2;
        keyed ^= (keyed >> 35) + len;
        keyed *= PRIME_MX2;
        return keyed ^ (keyed >> 28);
    }
    if (len <= 16) {
        uint64_t lo = le64(in) ^ (le64(SECRET + 24) ^ le64(SECRET + 32));
        uint64_t hi = le64(in + len - 8) ^ (le64(SECRET + 40) ^ le64(SECRET + 48));
        return xxh3_avalanche(len + swap64(lo) + hi + fold64(lo, hi));
    }
    uint64_t acc = len * PRIME64_1;
    if (len <= 128) {
        if (len > 32) {
            if (len > 64) {
                if (len > 96) {
                    acc += mix16(in + 48, SECRET + 96);
                    acc += mix16(in + len - 64, SECRET + 112);
                }
                acc += mix16(in + 32, SECRET + 64);
                acc += mix16(in + len - 48, SECRET + 80);
            }
            acc += mix16(in + 16, SECRET + 32);
            acc += mix16(in + len - 32, SECRET + 48);
        }
        acc += mix16(in, SECRET);
        acc += mix16(in + len - 16, SECRET + 16);
        return xxh3_avalanche(acc);
    }
    for (size_t i = 0; i < 8; i++) acc += mix16(in + 16 * i, SECRET + 16 * i);
    acc = xxh3_avalanche(acc);
    for (size_t i = 8; i < len / 16; i++) acc += mix16(in + 16 * i, SECRET + 16 * (i - 8) + 3);
    acc += mix16(in + len - 16, SECRET + 136 - 17);
    return xxh3_avalanche(acc);
}

/* ---- CSV: records cut into fields ---- */

#define CSV_FIELD_LIMIT 1048576 /* the csv module's field_size_limit (csvscan.py sets it): it fails a longer field */

/* Scans a piece of whole records from byte `begin` (a record boundary). Records before `skip` are only
 * counted; for the records from `skip` up to `stop` (or the end, when stop < 0) the fields of the wanted
 * columns (slot_of[column] >= 0) are recorded: bounds[(record * nslots + slot) * 2 + 0/1] = start/end of
 * the value's bytes (inside quotes), escaped[...] = 1 when it holds doubled quotes, fields[record] = its
 * number of fields as the csv module counts them (0 for a blank line, which the csv module reads as an
 * empty row; a record of another width than `width` keeps its first `width` fields, 0-0 for the missing),
 * starts[record] = its first byte (starts[recorded] = the end of the last). stats[0] = the longest record.
 * Returns the records recorded, or -1 when the piece holds anything the grammar below leaves out; then
 * stats[1] = the records recorded before the one that failed and stats[2] = that record's first byte
 * (the caller can take those records, leave that one to the csv module and scan again after it), or -1
 * for a NUL byte, -2 when there are more than `capacity` records:
 *   record = [field *(delim field)] ("\n" / "\r\n" / end of piece);
 *   field  = quoted / plain, quoted = '"' *(any byte but '"' / '""') '"', followed by delim or a line end;
 *   plain  = *(any byte but delim, '"', "\r", "\n") (a quote is plain too when quoting is off).
 * Within it the csv module (QUOTE_MINIMAL, doublequote) and Arrow read the same records and values. A bare
 * "\r", a quote in a plain field, text after a closing quote, an unterminated quote and a field over the
 * csv module's size limit are left to the other paths, and so is a piece with a NUL byte (and a \r or \n
 * delimiter, by the caller). */
long csv_scan(const uint8_t *p, long n, int delim, int quoting, int width, const int32_t *slot_of, int nslots,
              int32_t *bounds, uint8_t *escaped, int32_t *fields, int32_t *starts, long capacity, long begin,
              long skip, long stop, int64_t *stats) {
    long i = begin, rec = 0, kept = 0, longest = 0;
    stats[1] = 0;
    stats[2] = -1;
    if (n > INT32_MAX || begin < 0 || begin > n || memchr(p, 0, (size_t)n)) return -1;
    while (i < n && (stop < 0 || rec < stop)) {
        long record_start = i;
        int keep = rec >= skip;
        if (keep && kept >= capacity) {
            stats[2] = -2; /* more records than the caller made room for */
            return -1;
        }
        if (keep) {
            starts[kept] = (int32_t)i;
            for (int k = 0; k < nslots; k++) {
                bounds[2 * (kept * nslots + k)] = bounds[2 * (kept * nslots + k) + 1] = (int32_t)i;
                escaped[kept * nslots + k] = 0;
            }
        }
        int col = 0;
        if (p[i] == '\n' || (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n')) { /* a blank line */
            i += p[i] == '\n' ? 1 : 2;
        } else {
            for (;;) {
                long start, end;
                uint8_t doubled = 0;
                if (quoting && i < n && p[i] == '"') {
                    start = ++i;
                    for (;;) {
                        const uint8_t *q = i < n ? memchr(p + i, '"', (size_t)(n - i)) : NULL;
                        if (!q) goto unframed; /* an unterminated quote */
                        i = q - p;
                        if (i + 1 < n && p[i + 1] == '"') {
                            doubled = 1;
                            i += 2;
                            continue;
                        }
                        end = i++;
                        break;
                    }
                } else {
                    start = i;
                    while (i < n) {
                        uint8_t c = p[i];
                        if (c == delim || c == '\n' || c == '\r') break;
                        if (c == '"' && quoting) goto unframed;
                        i++;
                    }
                    end = i;
                }
                if (end - start > CSV_FIELD_LIMIT) goto unframed;
                if (keep && col < width && slot_of[col] >= 0) {
                    long at = kept * nslots + slot_of[col];
                    bounds[2 * at] = (int32_t)start;
                    bounds[2 * at + 1] = (int32_t)end;
                    escaped[at] = doubled;
                }
                col++;
                if (i >= n) break;
                uint8_t c = p[i];
                if (c == delim) {
                    i++;
                    continue;
                }
                if (c == '\n') {
                    i++;
                    break;
                }
                if (c == '\r' && i + 1 < n && p[i + 1] == '\n') {
                    i += 2;
                    break;
                }
                goto unframed; /* a bare \r, or text after a closing quote */
            }
        }
        if (keep) fields[kept] = col;
        if (i - record_start > longest) longest = i - record_start;
        rec++;
        kept += keep;
        continue;
    unframed:
        stats[1] = kept;
        stats[2] = record_start;
        if (keep) starts[kept] = (int32_t)record_start;
        return -1;
    }
    starts[kept] = (int32_t)i;
    stats[0] = longest;
    return kept;
}

/* A recorded value: its bytes in the piece, or with doubled quotes made single in `scratch`. */
typedef struct {
    const uint8_t *at;
    long len;
} value_t;

static inline value_t value_of(const uint8_t *p, const int32_t *bounds, const uint8_t *escaped, long at,
                               uint8_t *scratch) {
    const uint8_t *from = p + bounds[2 * at];
    long len = bounds[2 * at + 1] - bounds[2 * at];
    if (!escaped[at]) return (value_t){from, len};
    long w = 0;
    for (long i = 0; i < len; i++) {
        scratch[w++] = from[i];
        if (from[i] == '"') i++;
    }
    return (value_t){scratch, w};
}

/* ---- the plan pass: emails checked and keyed, rows fingerprinted ---- */

static const char LOCAL_CHARS[] = "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-";
static uint8_t local_ok[256], label_ok[256];

__attribute__((constructor)) static void tables(void) { /* at load time: no thread can race it */
    for (const char *c = LOCAL_CHARS; *c; c++) local_ok[(uint8_t)*c] = 1;
    for (int c = 'a'; c <= 'z'; c++) label_ok[c] = 1;
    for (int c = '0'; c <= '9'; c++) label_ok[c] = 1;
    label_ok['-'] = 2; /* allowed inside a label, not at its ends */
}

static inline int alnum(uint8_t c) { return label_ok[c] == 1; }

/* shared/profiles.py's email pattern on a lower-cased ASCII email: 3-254 characters, a local part of 1-64
 * dot-separated atoms, an @, then labels (1-63 of [a-z0-9-], not starting or ending with -) each followed
 * by a dot, then a top-level domain of 2-63 letters or xn-- and 1-59 of [a-z0-9-]. */
static int email_valid(const uint8_t *e, long len) {
    if (len < 3 || len > 254) return 0;
    long at = 0;
    while (at < len && e[at] != '@') at++;
    if (at < 1 || at > 64 || at == len) return 0;
    long atom = 0;
    for (long i = 0; i < at; i++) {
        if (e[i] == '.') {
            if (atom == 0) return 0;
            atom = 0;
        } else if (local_ok[e[i]]) {
            atom++;
        } else {
            return 0;
        }
    }
    if (atom == 0) return 0;
    long seg = at + 1, dots = 0;
    for (long i = at + 1; i <= len; i++) {
        if (i < len && e[i] != '.') continue;
        long n = i - seg;
        const uint8_t *s = e + seg;
        if (i < len) { /* a label */
            if (n < 1 || n > 63 || !alnum(s[0]) || !alnum(s[n - 1])) return 0;
            for (long k = 1; k < n - 1; k++)
                if (!label_ok[s[k]]) return 0;
            dots++;
        } else { /* the top-level domain */
            if (dots == 0) return 0;
            if (n >= 5 && memcmp(s, "xn--", 4) == 0 && n - 4 <= 59) {
                int ok = 1;
                for (long k = 4; k < n && ok; k++) ok = label_ok[s[k]] != 0;
                if (ok) return 1;
            }
            if (n < 2 || n > 63) return 0;
            for (long k = 0; k < n; k++)
                if (e[seg + k] < 'a' || e[seg + k] > 'z') return 0;
        }
        seg = i + 1;
    }
    return 1;
}

/* Python's str.strip() on UTF-8 text: ASCII white space (\t \n \v \f \r, \x1c-\x1f, space) and Unicode's
 * other white space (U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000). */
static inline int ascii_space(uint8_t c) { return c == ' ' || (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x1f); }

static inline int space_at(const uint8_t *s, long n) { /* bytes of the white space starting at s, or 0 */
    if (n >= 1 && ascii_space(s[0])) return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if (n >= 3) {
        if (s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80) return 3;
        if (s[0] == 0xE2 && s[1] == 0x80 && (s[2] <= 0x8A || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF))
            return 3; /* (s[2] is a continuation byte: 0x80 or more) */
        if (s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F) return 3;
        if (s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80) return 3;
    }
    return 0;
}

static inline value_t strip(value_t v) {
    int k;
    while (v.len > 0 && (k = space_at(v.at, v.len)) > 0) {
        v.at += k;
        v.len -= k;
    }
    for (;;) {
        if (v.len >= 1 && ascii_space(v.at[v.len - 1])) {
            v.len -= 1;
        } else if (v.len >= 2 && space_at(v.at + v.len - 2, 2) == 2) {
            v.len -= 2;
        } else if (v.len >= 3 && space_at(v.at + v.len - 3, 3) == 3) {
            v.len -= 3;
        } else {
            return v;
        }
    }
}

/* Python's strict UTF-8 decoder's verdict on n bytes: 1 when they decode (no overlong forms, no surrogates,
 * nothing past U+10FFFF), else 0. */
static int utf8_valid(const uint8_t *s, long n) {
    long i = 0;
    while (i < n) {
        uint64_t word;
        if (i + 8 <= n && (memcpy(&word, s + i, 8), (word & 0x8080808080808080ULL) == 0)) {
            i += 8; /* eight ASCII bytes */
            continue;
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        long need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return 0;
        }
        if (i + need >= n) return 0; /* cut short */
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (long k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
        i += need + 1;
    }
    return 1;
}

/* What plan_records makes of a record (status[r]); the caller turns codes into the row path's reasons. */
enum { ROW_OK, ROW_BLANK, ROW_WIDTH, ROW_BAD_BYTES, ROW_MISSING_EMAIL, ROW_INVALID_EMAIL, ROW_DEFER };

/* For each of `records` recorded records, what the row-by-row path decides, in its order: a blank line is
 * no row; another number of fields than `width`; bytes not valid UTF-8 (looked for only when check_utf8);
 * the email, stripped as str.strip() does and lower-cased, missing or invalid. A record that is none of
 * those is ROW_OK, with its email's key (ekeys[r]), its fingerprint (ckeys[r]: XXH3 of the content
 * columns' values joined by \x1f) and its email written to `emails` (offsets over the OK records only).
 * ROW_DEFER leaves a record to the caller's row path when this cannot be certain to decide as it does: an
 * email with non-ASCII characters (str.lower() can make them ASCII), a valid email longer than HASH_MAX,
 * a record longer than `max_record` bytes (its profile could pass Klaviyo's 100 KB). OK rows whose
 * fingerprinted text is longer than HASH_MAX are listed in long_rows (their ckeys left unset). `scratch`
 * holds at least the piece's size plus the content columns. Returns the email bytes written. */
long plan_records(const uint8_t *p, const int32_t *bounds, const uint8_t *escaped, const int32_t *fields,
                  const int32_t *starts, long records, int width, int check_utf8, long max_record, int nslots,
                  int email_slot, const int32_t *content_slots, int ncontent, uint8_t *status, uint64_t *ekeys,
                  uint64_t *ckeys, uint8_t *emails, int32_t *email_offsets, uint8_t *scratch, int64_t *long_rows,
                  int64_t *nlong) {
    long written = 0, ok = 0;
    *nlong = 0;
    email_offsets[0] = 0;
    for (long r = 0; r < records; r++) {
        const int32_t *slots = bounds + 2 * r * nslots;
        if (fields[r] == 0) {
            status[r] = ROW_BLANK;
            continue;
        }
        if (fields[r] != width) {
            status[r] = ROW_WIDTH;
            continue;
        }
        if (check_utf8 && !utf8_valid(p + starts[r], starts[r + 1] - starts[r])) {
            status[r] = ROW_BAD_BYTES;
            continue;
        }
        if (escaped[r * nslots + email_slot]) { /* a quote is never in a valid email, and never stripped */
            status[r] = ROW_INVALID_EMAIL;
            continue;
        }
        value_t email = strip((value_t){p + slots[2 * email_slot], slots[2 * email_slot + 1] - slots[2 * email_slot]});
        long len = email.len;
        if (len == 0) {
            status[r] = ROW_MISSING_EMAIL;
            continue;
        }
        uint8_t *out = emails + written;
        int ascii = 1;
        for (long k = 0; k < len; k++) {
            uint8_t c = email.at[k];
            ascii &= c < 128;
            out[k] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        }
        if (!ascii) {
            status[r] = ROW_DEFER;
            continue;
        }
        if (!email_valid(out, len)) {
            status[r] = ROW_INVALID_EMAIL;
            continue;
        }
        if (len > HASH_MAX || starts[r + 1] - starts[r] > max_record) {
            status[r] = ROW_DEFER;
            continue;
        }
        status[r] = ROW_OK;
        ekeys[r] = xxh3_64(out, (size_t)len);
        written += len;
        email_offsets[++ok] = (int32_t)written;
        long joined = 0;
        for (int k = 0; k < ncontent; k++) {
            if (k) scratch[joined++] = 0x1f;
            value_t v = value_of(p, bounds, escaped, r * nslots + content_slots[k], scratch + joined);
            if (v.at != scratch + joined) memcpy(scratch + joined, v.at, (size_t)v.len);
            joined += v.len;
        }
        if (joined > HASH_MAX) /* xxh3's long path: the caller hashes these rows */
            long_rows[(*nlong)++] = r;
        else
            ckeys[r] = xxh3_64(scratch, (size_t)joined);
    }
    return written;
}

/* ---- a push: profiles as JSON ---- */

static inline uint8_t *put(uint8_t *w, const uint8_t *s, long n) {
    memcpy(w, s, (size_t)n);
    return w + n;
}

static inline uint8_t *put_escaped(uint8_t *w, value_t v) { /* JSON string content as orjson writes it */
    static const char HEX[] = "0123456789abcdef";
    for (long i = 0; i < v.len; i++) {
        uint8_t c = v.at[i];
        if (c >= 0x20) {
            if (c == '"' || c == '\\') *w++ = '\\';
            *w++ = c;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '\b': *w++ = 'b'; break;
        case '\t': *w++ = 't'; break;
        case '\n': *w++ = 'n'; break;
        case '\f': *w++ = 'f'; break;
        case '\r': *w++ = 'r'; break;
        default:
            w = put(w, (const uint8_t *)"u00", 3);
            *w++ = HEX[c >> 4];
            *w++ = HEX[c & 15];
        }
    }
    return w;
}

/* The E.164 form of a trimmed ASCII phone (shared/profiles.py normalise_phone) into out; its length, or 0
 * when it is not E.164. */
static long e164(value_t v, uint8_t *out) {
    long n = 0;
    for (long i = 0; i < v.len; i++) {
        uint8_t c = v.at[i];
        if (ascii_space(c) || c == '(' || c == ')' || c == '.' || c == '-' || c == '/') continue;
        if (n >= 32) return 0;
        out[n++] = c;
    }
    if (n >= 2 && out[0] == '0' && out[1] == '0') {
        out[1] = '+';
        memmove(out, out + 1, (size_t)--n);
    }
    if (n < 8 || n > 16 || out[0] != '+' || out[1] < '1' || out[1] > '9') return 0;
    for (long i = 2; i < n; i++)
        if (out[i] < '0' || out[i] > '9') return 0;
    return n;
}

enum { TOP = 0, LOCATION = 1, PROPERTIES = 2 };

/* The profile JSON of each record at `chosen` (indexes of recorded records), exactly as
 * ProfileMapper.profile_json writes it: email, the top-level members, phone_number, location, properties,
 * in that order; a member is left out when its value is empty, an object when all its members are. Members
 * come in that order too: member_group[k] TOP, LOCATION or PROPERTIES, member_slot[k] its value's slot,
 * member key k at keys[key_offsets[k]:key_offsets[k + 1]] ("name":" already in JSON). Top-level and
 * location values are trimmed like str.strip(); properties are not. Writes the profiles one after another
 * into out (room for all of them: the caller sizes it), their offsets, and each email's key; adds the
 * phones that are there but not E.164 to *warnings. -1 when a record is not for this path: a non-ASCII
 * email or phone, an email longer than HASH_MAX. */
long build_profiles(const uint8_t *p, const int32_t *bounds, const uint8_t *escaped, int nslots,
                    const int64_t *chosen, long nchosen, int email_slot, int phone_slot, const int32_t *member_slot,
                    const int32_t *member_group, const int32_t *key_offsets, const uint8_t *keys, int nmembers,
                    uint8_t *out, int64_t *offsets, uint64_t *ekeys, int64_t *warnings, uint8_t *scratch) {
    static const char HEAD[] = "{\"type\":\"profile\",\"attributes\":{\"email\":\"";
    static const char PHONE[] = ",\"phone_number\":\"";
    static const char LOC[] = ",\"location\":{";
    static const char PROPS[] = ",\"properties\":{";
    uint8_t *w = out;
    long warned = 0;
    offsets[0] = 0;
    for (long c = 0; c < nchosen; c++) {
        long r = chosen[c];
        w = put(w, (const uint8_t *)HEAD, sizeof HEAD - 1);
        value_t email = value_of(p, bounds, escaped, r * nslots + email_slot, scratch);
        while (email.len > 0 && ascii_space(email.at[0])) {
            email.at++;
            email.len--;
        }
        while (email.len > 0 && ascii_space(email.at[email.len - 1])) email.len--;
        if (email.len > HASH_MAX) return -1;
        uint8_t *lowered = w;
        for (long i = 0; i < email.len; i++) {
            uint8_t ch = email.at[i];
            if (ch >= 128 || ch < 0x20) return -1;
            if (ch == '"' || ch == '\\') return -1; /* never in a planned email: leave it to the row path */
            *w++ = (ch >= 'A' && ch <= 'Z') ? ch + 32 : ch;
        }
        ekeys[c] = xxh3_64(lowered, (size_t)email.len);
        *w++ = '"';
        long k = 0;
        for (; k < nmembers && member_group[k] == TOP; k++) {
            value_t v = strip(value_of(p, bounds, escaped, r * nslots + member_slot[k], scratch));
            if (v.len == 0) continue;
            *w++ = ',';
            w = put(w, keys + key_offsets[k], key_offsets[k + 1] - key_offsets[k]);
            w = put_escaped(w, v);
            *w++ = '"';
        }
        if (phone_slot >= 0) {
            value_t raw = strip(value_of(p, bounds, escaped, r * nslots + phone_slot, scratch));
            if (raw.len > 0) {
                for (long i = 0; i < raw.len; i++)
                    if (raw.at[i] >= 128) return -1;
                uint8_t phone[32];
                long n = e164(raw, phone);
                if (n) {
                    w = put(w, (const uint8_t *)PHONE, sizeof PHONE - 1);
                    w = put(w, phone, n);
                    *w++ = '"';
                } else {
                    warned++;
                }
            }
        }
        for (int g = LOCATION; g <= PROPERTIES; g++) {
            int opened = 0;
            for (; k < nmembers && member_group[k] == g; k++) {
                value_t v = value_of(p, bounds, escaped, r * nslots + member_slot[k], scratch);
                if (g == LOCATION) v = strip(v);
                if (v.len == 0) continue;
                if (opened) {
                    *w++ = ',';
                } else {
                    w = g == LOCATION ? put(w, (const uint8_t *)LOC, sizeof LOC - 1)
                                      : put(w, (const uint8_t *)PROPS, sizeof PROPS - 1);
                    opened = 1;
                }
                w = put(w, keys + key_offsets[k], key_offsets[k + 1] - key_offsets[k]);
                w = put_escaped(w, v);
                *w++ = '"';
            }
            if (opened) *w++ = '}';
        }
        *w++ = '}';
        *w++ = '}';
        offsets[c + 1] = w - out;
    }
    *warnings += warned;
    return w - out;
}

/* ---- the plan's spill: a block's records grouped by bucket, and a bucket's emails written out ---- */

/* A counting sort of n records by bucket (the top `bits` bits of the email key, bits 1-16), keeping row
 * order within each: rec gets (email key, fingerprint, row id) rows, text and lengths the emails (from
 * text_in at offsets), counts and byte_counts each bucket's records and email bytes. */
void bucket_records(long n, int bits, const uint64_t *ekeys, const uint64_t *ckeys, const uint64_t *gids,
                    const uint8_t *text_in, const int32_t *offsets, int64_t *counts, int64_t *byte_counts,
                    int64_t *cursors /* 2 << bits */, uint64_t *rec, uint8_t *text, int32_t *lengths) {
    long buckets = 1L << bits;
    int shift = 64 - bits;
    memset(counts, 0, sizeof(int64_t) * (size_t)buckets);
    memset(byte_counts, 0, sizeof(int64_t) * (size_t)buckets);
    for (long i = 0; i < n; i++) {
        uint64_t b = ekeys[i] >> shift;
        counts[b]++;
        byte_counts[b] += offsets[i + 1] - offsets[i];
    }
    int64_t at = 0, byte_at = 0, *next = cursors, *next_byte = cursors + buckets;
    for (long b = 0; b < buckets; b++) {
        next[b] = at;
        next_byte[b] = byte_at;
        at += counts[b];
        byte_at += byte_counts[b];
    }
    for (long i = 0; i < n; i++) {
        uint64_t b = ekeys[i] >> shift;
        int64_t to = next[b]++;
        int32_t len = offsets[i + 1] - offsets[i];
        rec[3 * to] = ekeys[i];
        rec[3 * to + 1] = ckeys[i];
        rec[3 * to + 2] = gids[i];
        lengths[to] = len;
        memcpy(text + next_byte[b], text_in + offsets[i], (size_t)len);
        next_byte[b] += len;
    }
}

/* The emails at `order` (indexes), each followed by a newline, into out; returns the bytes written. */
long email_lines(const uint8_t *text, const int32_t *offsets, const int64_t *order, long n, uint8_t *out) {
    uint8_t *w = out;
    for (long i = 0; i < n; i++) {
        int64_t k = order[i];
        int32_t len = offsets[k + 1] - offsets[k];
        memcpy(w, text + offsets[k], (size_t)len);
        w += len;
        *w++ = '\n';
    }
    return w - out;
}
