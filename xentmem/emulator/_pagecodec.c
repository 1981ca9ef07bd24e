/* The page codec of the emulator's compressing clients: lz4 blocks of one 4 KiB page.
 *
 * The one native piece of the emulator. A compressed GET decodes straight into the guest frame
 * (no intermediate bytes object, no second copy); a compressing PUT encodes on the stack and
 * makes one bytes object of the result. Everything else about PUT and GET (lookups, counters,
 * whether compression pays, errnos) stays in Python, in _tmem.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>

#define PAGE_SIZE 4096

/* liblz4's stable ABI (lz4.h), declared here so that only the runtime library is needed. */
int LZ4_compress_default(const char *src, char *dst, int src_size, int dst_capacity);
int LZ4_decompress_safe(const char *src, char *dst, int compressed_size, int dst_capacity);

/* LZ4_COMPRESSBOUND(4096): the most one page can take. */
#define PAGE_BOUND (PAGE_SIZE + PAGE_SIZE / 255 + 16)

PyDoc_STRVAR(compress_page_doc,
"compress_page(page: buffer) -> bytes\n\n"
"The lz4 block (no size header) of one 4 KiB page. ValueError unless ``page`` is 4096 bytes.");

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
    char packed[PAGE_BOUND];
    int size = LZ4_compress_default(view.buf, packed, PAGE_SIZE, PAGE_BOUND);
    PyBuffer_Release(&view);
    if (size <= 0) {  /* cannot happen with a bound-sized output; never return garbage */
        PyErr_SetString(PyExc_RuntimeError, "LZ4_compress_default failed");
        return NULL;
    }
    return PyBytes_FromStringAndSize(packed, size);
}

PyDoc_STRVAR(decode_into_doc,
"decode_into(packed: bytes, memory: writable buffer, offset: int) -> bool\n\n"
"Decode the lz4 block ``packed`` into memory[offset:offset + 4096]. True when it is exactly one\n"
"4 KiB page; False otherwise (nothing outside those 4096 bytes is ever written). ValueError\n"
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
    Py_ssize_t size = PyBytes_GET_SIZE(packed);
    Py_ssize_t offset = PyLong_AsSsize_t(args[2]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (offset < 0 || view.len < PAGE_SIZE || offset > view.len - PAGE_SIZE || size > INT_MAX) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "a page at offset %zd does not fit a %zd-byte buffer",
                     offset, view.len);
        return NULL;
    }
    int decoded = LZ4_decompress_safe(PyBytes_AS_STRING(packed), (char *)view.buf + offset,
                                      (int)size, PAGE_SIZE);
    PyBuffer_Release(&view);
    return PyBool_FromLong(decoded == PAGE_SIZE);
}

static PyMethodDef methods[] = {
    {"compress_page", compress_page, METH_O, compress_page_doc},
    {"decode_into", (PyCFunction)(void (*)(void))decode_into, METH_FASTCALL, decode_into_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "xentmem.emulator._pagecodec",
    "lz4 blocks of 4 KiB pages: encode one, decode one straight into guest memory.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__pagecodec(void)
{
    return PyModule_Create(&module);
}
