/* The page codec of the emulator's compressing clients: LZO1X-1 of one 4 KiB page, byte for byte
 * as Xen 4.5-4.12 compressed it (xen/common/lzo.c, the Linux 3.7+ port of LZO 2.06's LZO1X-1).
 *
 * The one native piece of the emulator. A compressing PUT encodes on the stack and makes one bytes
 * object of the result; a compressed GET decodes straight into the guest frame (no intermediate
 * bytes object, no second copy). Everything else about PUT and GET (lookups, counters, whether
 * compression pays, errnos) stays in Python, in _tmem.py.
 *
 * Why not Debian's liblzo2 (2.10): its LZO1X-1 is the same algorithm with a 14-bit dictionary,
 * Xen's has 13 bits (8192 two-byte entries, its LZO1X_1_MEM_COMPRESS). Two different 4-byte
 * words that share a 13-bit bucket but not a 14-bit one make Xen miss a match liblzo2 finds, so
 * most text and code pages come out a few bytes apart, and `cb` with them (pages with runs,
 * short periods or no repeats at all, such as one byte, half zeros or noise, come out the same).
 * Its checked decoder took 4-9x the time of the lz4 decoder this codec replaced, on code and
 * binary pages and on runs alike (measured here); the decoder below copies in 8- and 16-byte
 * steps and takes half liblzo2's time on code and binary pages, a tenth or less on runs and
 * repeated text. The tests hold both halves against liblzo2 and the compressor against Xen's
 * own output.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PAGE_SIZE 4096

/* lzo1x_worst_compress(4096): the most one page can take (all literals take 4116). */
#define PAGE_BOUND (PAGE_SIZE + PAGE_SIZE / 16 + 64 + 3)

#define DICT_BITS 13       /* Xen's dictionary: 8192 positions, cleared for every page */
#define LOOKAHEAD 20       /* no match search starts in the last 20 bytes */
#define M2_MAX_LEN 8       /* two-byte match codes: length 3-8, distance up to 2048 */
#define M2_MAX_DIST 0x800
#define M3_MAX_LEN 33      /* longer or farther: 0x20 | (len - 2), then the distance */
#define M3_MARKER 0x20
#define EOF_MARKER 0x11    /* a distance-16 KiB "match" of length 3: the end of the stream */

static inline uint32_t
le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Bytes a and b agree on from their start, of 8 (memcmp-free: one load and one bit scan). */
static inline size_t
common8(const uint8_t *a, const uint8_t *b)
{
    uint64_t x, y;
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    uint64_t diff = x ^ y;
    if (!diff)
        return 8;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (size_t)__builtin_ctzll(diff) / 8;
#else
    return (size_t)__builtin_clzll(diff) / 8;
#endif
}

/* A length beyond what the code byte holds: a zero byte per 255, then the rest (1-255). */
static uint8_t *
put_long_count(uint8_t *op, size_t rest)
{
    while (rest > 255) {
        *op++ = 0;
        rest -= 255;
    }
    *op++ = (uint8_t)rest;
    return op;
}

/* The literal run src[0:n]. Up to 3 literals ride in the low two bits of the previous match's
 * second-to-last byte (a page's first run is never that short: the first probe is at byte 5). */
static uint8_t *
put_literals(uint8_t *op, const uint8_t *src, size_t n)
{
    if (n == 0)
        return op;
    if (n <= 3)
        op[-2] |= (uint8_t)n;
    else if (n <= 18)
        *op++ = (uint8_t)(n - 3);
    else {
        *op++ = 0;
        op = put_long_count(op, n - 18);
    }
    memcpy(op, src, n);
    return op + n;
}

/* A match of len bytes dist back. A page's distances stay below 4096, so the 16-48 KiB code
 * (M4) of the general compressor never occurs. */
static uint8_t *
put_match(uint8_t *op, size_t len, size_t dist)
{
    size_t d = dist - 1;
    if (len <= M2_MAX_LEN && dist <= M2_MAX_DIST) {
        *op++ = (uint8_t)((len - 1) << 5 | (d & 7) << 2);
        *op++ = (uint8_t)(d >> 3);
        return op;
    }
    if (len <= M3_MAX_LEN)
        *op++ = (uint8_t)(M3_MARKER | (len - 2));
    else {
        *op++ = M3_MARKER;
        op = put_long_count(op, len - M3_MAX_LEN);
    }
    *op++ = (uint8_t)(d << 2);
    *op++ = (uint8_t)(d >> 6);
    return op;
}

/* LZO1X-1 of one page into out (PAGE_BOUND bytes); returns the compressed size.
 *
 * Greedy: at each probed position hash its 4-byte word into the dictionary, which remembers the
 * last position of each bucket; when that earlier position holds the same word, take the match,
 * extended 8 bytes at a time. A match may not grow once it reaches the last 20 bytes: each
 * 8-byte step that lands there ends it (that step's bytes counted, nothing more). After a miss
 * the next probe skips 1 + (literals pending)/32 bytes, so incompressible data is crossed fast;
 * after a match it probes the next byte. */
static size_t
lzo1x_1_page(const uint8_t *in, uint8_t *out)
{
    uint16_t dict[1 << DICT_BITS];
    memset(dict, 0, sizeof dict);  /* an unused bucket names position 0, as in Xen */
    const uint8_t *const end = in + PAGE_SIZE;
    const uint8_t *const search_end = end - LOOKAHEAD;
    const uint8_t *lit = in;  /* the first byte not yet written out */
    const uint8_t *ip = in + 5;  /* Xen steps once past the first 4 bytes before probing */
    uint8_t *op = out;

    while (ip < search_end) {
        uint32_t word = le32(ip);
        uint32_t bucket = (uint32_t)(word * 0x1824429dU) >> (32 - DICT_BITS);
        const uint8_t *cand = in + dict[bucket];
        dict[bucket] = (uint16_t)(ip - in);
        if (le32(cand) != word) {
            ip += 1 + ((size_t)(ip - lit) >> 5);
            continue;
        }
        op = put_literals(op, lit, (size_t)(ip - lit));
        size_t len = 4;
        for (;;) {
            size_t same = common8(ip + len, cand + len);
            len += same;
            if (same < 8 || ip + len >= search_end)
                break;
        }
        op = put_match(op, len, (size_t)(ip - cand));
        ip += len;
        lit = ip;
    }
    /* The rest as literals (never the whole page: a run of 4096 takes the long form, and a
     * shorter final run always follows a match, so the first-byte form (17 + n) never occurs). */
    op = put_literals(op, lit, (size_t)(end - lit));
    *op++ = EOF_MARKER;
    *op++ = 0;
    *op++ = 0;
    return (size_t)(op - out);
}

/* Copy n literals; false when the input or the page has fewer. Short runs (the common case) go
 * in 16-byte steps where both sides have room to overshoot, the rest exactly. */
static inline int
copy_literals(const uint8_t **ipp, const uint8_t *ip_end, uint8_t **opp, uint8_t *op_end,
              size_t n)
{
    const uint8_t *ip = *ipp;
    uint8_t *op = *opp;
    if (n > (size_t)(ip_end - ip) || n > (size_t)(op_end - op))
        return 0;
    if ((size_t)(ip_end - ip) - n >= 16 && (size_t)(op_end - op) - n >= 16) {
        for (size_t done = 0; done < n; done += 16)
            memcpy(op + done, ip + done, 16);
    } else
        memcpy(op, ip, n);
    *ipp = ip + n;
    *opp = op + n;
    return 1;
}

/* Copy a match of len bytes dist back (dist and len already checked against the page). */
static inline uint8_t *
copy_match(uint8_t *op, uint8_t *op_end, size_t dist, size_t len)
{
    const uint8_t *const m = op - dist;
    uint8_t *const end = op + len;
    if (len <= 16 && op_end - op >= 16) {  /* the common short match */
        if (dist >= 8) {  /* two 8-byte steps, each reading only finished bytes */
            memcpy(op, m, 8);
            memcpy(op + 8, m + 8, 8);
        } else
            for (size_t i = 0; i < len; i++)
                op[i] = m[i];
        return end;
    }
    /* Longer: the match repeats the span before op, which doubles with every copy (a run of one
     * byte takes 12 copies for a page), so no copy reads bytes it is writing itself. */
    size_t span = dist;
    while (op < end) {
        size_t n = (size_t)(end - op) < span ? (size_t)(end - op) : span;
        memcpy(op, m, n);
        op += n;
        span += n;
    }
    return end;
}

/* A long length: zero bytes each add 255, then a non-zero byte; base is the opcode's maximum. */
static inline int
long_count(const uint8_t **ipp, const uint8_t *ip_end, size_t base, size_t *count)
{
    const uint8_t *ip = *ipp;
    size_t n = base;
    while (ip < ip_end && *ip == 0) {
        n += 255;
        ip++;
    }
    if (ip >= ip_end)
        return 0;
    *count = n + *ip++;
    *ipp = ip;
    return 1;
}

/* Decode the LZO1X stream ip[0:n] into dst[0:4096]: true only when it is well formed, ends
 * (with its end mark) exactly at ip + n, and fills exactly the page. Every read stays inside
 * the stream, every write inside the page, every match inside what was written already. */
static int
lzo1x_decode_page(const uint8_t *ip, size_t n, uint8_t *const dst)
{
    const uint8_t *const ip_end = ip + n;
    uint8_t *op = dst;
    uint8_t *const op_end = dst + PAGE_SIZE;
    /* literals the last instruction copied: 0, 1-3, or 4 for a run of 4 or more; it decides
     * what opcodes 0-15 mean next */
    size_t state = 0;

    if (n && *ip > 17) {  /* a first literal run of 1-238 */
        size_t t = *ip++ - 17u;
        if (!copy_literals(&ip, ip_end, &op, op_end, t))
            return 0;
        state = t < 4 ? t : 4;
    }
    for (;;) {
        if (ip >= ip_end)
            return 0;
        size_t t = *ip++, dist, len;
        if (t < 16 && state == 0) {  /* 0000LLLL: a run of 4 or more literals */
            if (t == 0 && !long_count(&ip, ip_end, 15, &t))
                return 0;
            if (!copy_literals(&ip, ip_end, &op, op_end, t + 3))
                return 0;
            state = 4;
            continue;
        }
        if (t < 16) {  /* 0000DDSS HHHHHHHH: 2 bytes up to 1 KiB back, 3 at 2-3 KiB after a run */
            if (ip >= ip_end)
                return 0;
            dist = 1 + (t >> 2) + ((size_t)*ip++ << 2);
            len = 2;
            if (state == 4) {
                dist += 2048;
                len = 3;
            }
        } else if (t >= 64) {  /* LLLDDDSS HHHHHHHH: 3-8 bytes up to 2 KiB back */
            if (ip >= ip_end)
                return 0;
            dist = 1 + ((t >> 2) & 7) + ((size_t)*ip++ << 3);
            len = (t >> 5) + 1;
        } else {  /* 001LLLLL or 0001HLLL, then DDDDDDSS DDDDDDDD */
            size_t base = t >= 32 ? 31 : 7;
            len = t & base;
            if (len == 0 && !long_count(&ip, ip_end, base, &len))
                return 0;
            len += 2;
            if (ip_end - ip < 2)
                return 0;
            dist = ((size_t)ip[0] >> 2) + ((size_t)ip[1] << 6);
            ip += 2;
            if (t >= 32)
                dist += 1;
            else {
                dist += (t & 8) << 11;
                if (dist == 0)  /* the end mark */
                    return ip == ip_end && op == op_end;
                dist += 0x4000;
            }
        }
        if (dist > (size_t)(op - dst) || len > (size_t)(op_end - op))
            return 0;
        op = copy_match(op, op_end, dist, len);
        state = ip[-2] & 3;  /* SS: 0-3 literals follow the match */
        if (state && !copy_literals(&ip, ip_end, &op, op_end, state))
            return 0;
    }
}

/* True when packed decodes to exactly one page at dst (nothing outside dst[0:4096] written). */
static int
decode_page(PyObject *packed, uint8_t *dst)
{
    return lzo1x_decode_page((const uint8_t *)PyBytes_AS_STRING(packed),
                             (size_t)PyBytes_GET_SIZE(packed), dst);
}

PyDoc_STRVAR(compress_page_doc,
"compress_page(page: buffer) -> bytes\n\n"
"The LZO1X-1 stream of one 4 KiB page, as Xen's lzo1x_1_compress writes it. ValueError unless\n"
"``page`` is 4096 bytes.");

static PyObject *
compress_page(PyObject *module, PyObject *page)
{
    Py_buffer view;
    if (PyObject_GetBuffer(page, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len != PAGE_SIZE) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "a page is 4096 bytes, not %zd", view.len);
        return NULL;
    }
    uint8_t packed[PAGE_BOUND];
    size_t size = lzo1x_1_page(view.buf, packed);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)packed, (Py_ssize_t)size);
}

PyDoc_STRVAR(decode_into_doc,
"decode_into(packed: bytes, memory: writable buffer, offset: int) -> bool\n\n"
"Decode the LZO1X stream ``packed`` into memory[offset:offset + 4096]. True when it is exactly\n"
"one 4 KiB page; False otherwise (nothing outside those 4096 bytes is ever written). ValueError\n"
"when the page does not lie inside ``memory``.");

static PyObject *
decode_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "decode_into() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *packed = args[0];
    if (!PyBytes_Check(packed)) {
        PyErr_SetString(PyExc_TypeError, "decode_into() needs bytes to decode");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[2]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (offset < 0 || view.len < PAGE_SIZE || offset > view.len - PAGE_SIZE) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "a page at offset %zd does not fit a %zd-byte buffer",
                     offset, view.len);
        return NULL;
    }
    int ok = decode_page(packed, (uint8_t *)view.buf + offset);
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

PyDoc_STRVAR(decompress_page_doc,
"decompress_page(packed: bytes) -> bytes\n\n"
"The 4 KiB page the LZO1X stream ``packed`` holds. ValueError unless it is exactly one page.");

static PyObject *
decompress_page(PyObject *module, PyObject *packed)
{
    if (!PyBytes_Check(packed)) {
        PyErr_SetString(PyExc_TypeError, "decompress_page() needs bytes to decode");
        return NULL;
    }
    PyObject *page = PyBytes_FromStringAndSize(NULL, PAGE_SIZE);
    if (page == NULL)
        return NULL;
    if (!decode_page(packed, (uint8_t *)PyBytes_AS_STRING(page))) {
        Py_DECREF(page);
        PyErr_SetString(PyExc_ValueError, "not an LZO1X stream of one 4096-byte page");
        return NULL;
    }
    return page;
}

static PyMethodDef methods[] = {
    {"compress_page", compress_page, METH_O, compress_page_doc},
    {"decode_into", (PyCFunction)(void (*)(void))decode_into, METH_FASTCALL, decode_into_doc},
    {"decompress_page", decompress_page, METH_O, decompress_page_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "xentmem.emulator._pagecodec",
    "LZO1X-1 of 4 KiB pages as Xen wrote it: encode one, decode one straight into guest memory.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__pagecodec(void)
{
    return PyModule_Create(&module);
}
