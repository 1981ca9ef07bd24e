/* The page codec of the emulator's compressing clients: LZO1X-1 of one 4 KiB page, byte for byte
 * as Xen 4.5-4.12 compressed it (xen/common/lzo.c, the Linux 3.7+ port of LZO 2.06's LZO1X-1).
 *
 * The one native piece of the emulator. A compressing PUT encodes on the stack and makes one bytes
 * object of the result; a compressed GET decodes straight into the guest frame (no intermediate
 * bytes object, no second copy). Everything else about PUT and GET (lookups, counters, whether
 * compression pays, errnos) stays in Python, in _tmem.py.
 *
 * Why our own compressor: Debian's liblzo2 (2.10) runs the same LZO1X-1 algorithm with a 14-bit
 * dictionary, Xen's has 13 bits (8192 two-byte entries, its LZO1X_1_MEM_COMPRESS). Two different
 * 4-byte words that share a 13-bit bucket but not a 14-bit one make Xen miss a match liblzo2
 * finds, so most text and code pages come out a few bytes apart, and `cb` with them. Pages with
 * runs, short periods or no repeats at all (one byte, half zeros, random) come out the same.
 * LZO1X is one stream format, so liblzo2's checked decoder reads what Xen wrote.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PAGE_SIZE 4096

/* liblzo2's stable ABI (lzo/lzo1x.h, lzo_uint is size_t-wide), declared here so that only the
 * runtime library is needed. The checked decoder never reads past src_len nor writes past
 * *dst_len; it takes no work memory. */
int lzo1x_decompress_safe(const unsigned char *src, size_t src_len, unsigned char *dst,
                          size_t *dst_len, void *wrkmem);
#define LZO_E_OK 0

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

/* True when packed decodes to exactly one page at dst (nothing outside dst[0:4096] written). */
static int
decode_page(PyObject *packed, uint8_t *dst)
{
    size_t out_len = PAGE_SIZE;
    int rc = lzo1x_decompress_safe((const unsigned char *)PyBytes_AS_STRING(packed),
                                   (size_t)PyBytes_GET_SIZE(packed), dst, &out_len, NULL);
    return rc == LZO_E_OK && out_len == PAGE_SIZE;
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
