/* Compiled helpers for the local engine's hot loops (issue 12).
 *
 * Optional: setup.py builds this module with the system compiler when one is there, and every
 * function here has a pure-Python twin that is used when the module is absent or when
 * TURSO_SYNC_PURE_PYTHON=1 refuses it.  The tests compare the two on random and edge inputs.
 *
 * wal_checksum(data, s1=0, s2=0, big_endian=False) -> (s1, s2)
 *     SQLite's WAL checksum of `data` (any buffer, a multiple of 8 bytes) continuing from (s1, s2):
 *     for each pair of 32-bit words (x, y), s1 += x + s2; s2 += y + s1, modulo 2**32.  The words
 *     are read little-endian, or big-endian when `big_endian` is true, whatever the host's order.
 *     s1 and s2 are taken modulo 2**32, as the Python versions do.
 *
 * file_control_router(file, handled, hook, base) -> router
 *     A callable router(op, ptr) that calls hook(file, op, ptr) when op is one of `handled` (at
 *     most 8 ints) and base(file, op, ptr) otherwise.  Set as a VFS file's instance attribute
 *     xFileControl (APSW looks the method up on the object, so it wins over the class's), it
 *     answers SQLite's frequent controls (LOCK_TIMEOUT at every read transaction) without a
 *     Python frame.  It holds the file by a weak reference (no cycle through the file's own
 *     dict); once the file is gone a call raises ReferenceError.  The pure-Python twin is the
 *     file class's own xFileControl method, which routes the same way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Longer inputs are checksummed without the GIL (a 64 KiB buffer takes ~10 us). */
#define RELEASE_GIL_BYTES (64 * 1024)

static int
host_is_big_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 0;
}

static inline uint32_t
swap32(uint32_t v)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_bswap32(v);
#else
    return ((v & 0xFFu) << 24) | ((v & 0xFF00u) << 8) | ((v >> 8) & 0xFF00u) | (v >> 24);
#endif
}

/* Each step's chain is two additions when x is added to s1 and y to s2 before the other sum
 * arrives: s1' = (s1 + x) + s2, s2' = (s2 + y) + s1'.  Compilers reassociate that into
 * s1' = s1 + (s2 + x), four dependent additions per pair, so an empty asm pins the partial sums. */
#if defined(__GNUC__) || defined(__clang__)
#define KEEP(v) __asm__("" : "+r"(v))
#else
#define KEEP(v) ((void)0)
#endif

/* The recurrence over `npairs` word pairs at `p`; `swap` when the words' order is not the host's.
 * memcpy reads the words without assuming alignment (a memoryview slice may start anywhere). */
static void
checksum_pairs(const unsigned char *p, Py_ssize_t npairs, int swap, uint32_t *s1p, uint32_t *s2p)
{
    uint32_t s1 = *s1p, s2 = *s2p, w[2], a, b;
    Py_ssize_t i;
    if (swap) {
        for (i = 0; i < npairs; i++, p += 8) {
            memcpy(w, p, 8);
            a = s1 + swap32(w[0]);
            b = s2 + swap32(w[1]);
            KEEP(a);
            KEEP(b);
            s1 = a + s2;
            s2 = b + s1;
        }
    }
    else {
        for (i = 0; i < npairs; i++, p += 8) {
            memcpy(w, p, 8);
            a = s1 + w[0];
            b = s2 + w[1];
            KEEP(a);
            KEEP(b);
            s1 = a + s2;
            s2 = b + s1;
        }
    }
    *s1p = s1;
    *s2p = s2;
}

static const char *const kw_names[] = {"data", "s1", "s2", "big_endian"};

/* Arguments by position or by name, parsed by hand: the vectorcall convention saves the tuple and
 * dict that PyArg_ParseTupleAndKeywords needs, which is a fifth of a 4 KiB frame's time. */
static PyObject *
wal_checksum(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *slots[4] = {NULL, NULL, NULL, NULL};
    Py_ssize_t i, j, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_buffer view;
    uint32_t s1 = 0, s2 = 0;
    int big = 0;
    (void)module;

    if (nargs > 4) {
        PyErr_Format(PyExc_TypeError, "wal_checksum() takes at most 4 arguments (%zd given)", nargs);
        return NULL;
    }
    for (i = 0; i < nargs; i++)
        slots[i] = args[i];
    for (i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        for (j = 0; j < 4; j++)
            if (PyUnicode_CompareWithASCIIString(name, kw_names[j]) == 0)
                break;
        if (j == 4) {
            PyErr_Format(PyExc_TypeError, "wal_checksum() got an unexpected keyword argument '%U'", name);
            return NULL;
        }
        if (slots[j] != NULL) {
            PyErr_Format(PyExc_TypeError, "wal_checksum() got multiple values for argument '%s'", kw_names[j]);
            return NULL;
        }
        slots[j] = args[nargs + i];
    }
    if (slots[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "wal_checksum() missing required argument 'data'");
        return NULL;
    }
    for (j = 1; j < 3; j++) {
        if (slots[j] != NULL) {
            unsigned long v;
            if (!PyLong_Check(slots[j])) {
                PyErr_Format(PyExc_TypeError, "wal_checksum() argument '%s' must be int, not %.50s", kw_names[j],
                             Py_TYPE(slots[j])->tp_name);
                return NULL;
            }
            v = PyLong_AsUnsignedLongMask(slots[j]); /* modulo 2**(bits of long): keeps the low 32 */
            if (v == (unsigned long)-1 && PyErr_Occurred())
                return NULL;
            if (j == 1)
                s1 = (uint32_t)v;
            else
                s2 = (uint32_t)v;
        }
    }
    if (slots[3] != NULL) {
        big = PyObject_IsTrue(slots[3]);
        if (big < 0)
            return NULL;
    }

    if (PyObject_GetBuffer(slots[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "wal_checksum: data must be a multiple of 8 bytes, not %zd", view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    if (view.len >= RELEASE_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        checksum_pairs(view.buf, view.len / 8, big != host_is_big_endian(), &s1, &s2);
        Py_END_ALLOW_THREADS
    }
    else {
        checksum_pairs(view.buf, view.len / 8, big != host_is_big_endian(), &s1, &s2);
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(kk)", (unsigned long)s1, (unsigned long)s2);
}

#define ROUTER_MAX_HANDLED 8

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *file_ref; /* weak reference to the file */
    PyObject *hook;
    PyObject *base;
    int nhandled;
    long handled[ROUTER_MAX_HANDLED];
} RouterObject;

static PyObject *
router_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RouterObject *router = (RouterObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *file, *target, *call_args[3], *result;
    long op;
    int i;

    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "xFileControl router takes exactly 2 positional arguments (op, ptr)");
        return NULL;
    }
    op = PyLong_AsLong(args[0]);
    if (op == -1 && PyErr_Occurred())
        return NULL;
#if PY_VERSION_HEX >= 0x030D0000
    if (PyWeakref_GetRef(router->file_ref, &file) < 0)
        return NULL;
    if (file == NULL) {
        PyErr_SetString(PyExc_ReferenceError, "xFileControl router: its file no longer exists");
        return NULL;
    }
#else
    file = PyWeakref_GetObject(router->file_ref); /* borrowed */
    if (file == NULL)
        return NULL;
    if (file == Py_None) {
        PyErr_SetString(PyExc_ReferenceError, "xFileControl router: its file no longer exists");
        return NULL;
    }
    Py_INCREF(file);
#endif
    target = router->base;
    for (i = 0; i < router->nhandled; i++) {
        if (router->handled[i] == op) {
            target = router->hook;
            break;
        }
    }
    call_args[0] = file;
    call_args[1] = args[0];
    call_args[2] = args[1];
    result = PyObject_Vectorcall(target, call_args, 3, NULL);
    Py_DECREF(file);
    return result;
}

static void
router_dealloc(PyObject *self)
{
    RouterObject *router = (RouterObject *)self;
    Py_XDECREF(router->file_ref);
    Py_XDECREF(router->hook);
    Py_XDECREF(router->base);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject RouterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turso_sync._speedups.FileControlRouter",
    .tp_basicsize = sizeof(RouterObject),
    .tp_dealloc = router_dealloc,
    .tp_vectorcall_offset = offsetof(RouterObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "router(op, ptr): hook(file, op, ptr) for the handled ops, base(file, op, ptr) for the others.",
};

static PyObject *
file_control_router(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    RouterObject *router;
    PyObject *handled, *item;
    Py_ssize_t n, i;
    (void)module;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "file_control_router() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyCallable_Check(args[2]) || !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "file_control_router(): hook and base must be callable");
        return NULL;
    }
    handled = PySequence_Tuple(args[1]);
    if (handled == NULL)
        return NULL;
    n = PyTuple_GET_SIZE(handled);
    if (n > ROUTER_MAX_HANDLED) {
        PyErr_Format(PyExc_ValueError, "file_control_router(): at most %d handled ops, not %zd", ROUTER_MAX_HANDLED, n);
        Py_DECREF(handled);
        return NULL;
    }
    router = PyObject_New(RouterObject, &RouterType);
    if (router == NULL) {
        Py_DECREF(handled);
        return NULL;
    }
    router->vectorcall = router_vectorcall;
    router->file_ref = NULL;
    router->hook = NULL;
    router->base = NULL;
    router->nhandled = (int)n;
    for (i = 0; i < n; i++) {
        item = PyTuple_GET_ITEM(handled, i);
        if (!PyLong_Check(item)) {
            PyErr_Format(PyExc_TypeError, "file_control_router(): handled ops must be ints, not %.50s",
                         Py_TYPE(item)->tp_name);
            goto fail;
        }
        router->handled[i] = PyLong_AsLong(item);
        if (router->handled[i] == -1 && PyErr_Occurred())
            goto fail;
    }
    Py_DECREF(handled);
    handled = NULL;
    router->file_ref = PyWeakref_NewRef(args[0], NULL);
    if (router->file_ref == NULL)
        goto fail;
    Py_INCREF(args[2]);
    router->hook = args[2];
    Py_INCREF(args[3]);
    router->base = args[3];
    return (PyObject *)router;
fail:
    Py_XDECREF(handled);
    Py_DECREF(router);
    return NULL;
}

/* ==== xread (session 10): a main database file's page reads in Turso's format, without a Python frame ====
 *
 * page_reader(file, base, state, fd, slot, page, decrypt) -> reader
 *     A callable reader(amount, offset), set as an EncryptedDBFile's instance attribute xRead (APSW
 *     looks the method up on the object, so it wins over the class's).  For a whole, aligned page
 *     other than page 1, while `state.lazy` is None, it preads the page from descriptor `fd` into
 *     `slot` (a bytearray of the page size), calls `decrypt()` (which decrypts `slot` into `page`, a
 *     bytearray of the same size) and returns `page`.  Anything else -- another read, a short read,
 *     a read error, a page `decrypt` refuses, a partial replica -- is base(file, amount, offset),
 *     the class's own method, which keeps every behaviour and error.  The file is held by a weak
 *     reference (no cycle through its own dict); once it is gone a call raises ReferenceError.
 *     Both buffers are held (and exported, so they cannot be resized) for the reader's life.
 */
#include <errno.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *file_ref; /* weak reference to the file */
    PyObject *base;     /* the class's xRead(file, amount, offset) */
    PyObject *state;    /* DatabaseState: its `lazy` is read at each call */
    PyObject *decrypt;  /* decrypt(): slot -> page, raises on a page that does not verify */
    PyObject *page;     /* what a read returns */
    Py_buffer slot;     /* the pread target, exported for the reader's life */
    int has_slot;
    int fd;
} PageReaderObject;

static PyObject *lazy_name; /* "lazy", interned */

static PyObject *
page_reader_fallback(PageReaderObject *reader, PyObject *const *args)
{
    PyObject *file, *call_args[3], *result;
#if PY_VERSION_HEX >= 0x030D0000
    if (PyWeakref_GetRef(reader->file_ref, &file) < 0)
        return NULL;
    if (file == NULL) {
        PyErr_SetString(PyExc_ReferenceError, "xRead page reader: its file no longer exists");
        return NULL;
    }
#else
    file = PyWeakref_GetObject(reader->file_ref); /* borrowed */
    if (file == NULL)
        return NULL;
    if (file == Py_None) {
        PyErr_SetString(PyExc_ReferenceError, "xRead page reader: its file no longer exists");
        return NULL;
    }
    Py_INCREF(file);
#endif
    call_args[0] = file;
    call_args[1] = args[0];
    call_args[2] = args[1];
    result = PyObject_Vectorcall(reader->base, call_args, 3, NULL);
    Py_DECREF(file);
    return result;
}

static PyObject *
page_reader_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PageReaderObject *reader = (PageReaderObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), size = reader->slot.len, got;
    long long amount, offset;
    PyObject *lazy, *done;

    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "xRead page reader takes exactly 2 positional arguments (amount, offset)");
        return NULL;
    }
    if (!PyLong_CheckExact(args[0]) || !PyLong_CheckExact(args[1]))
        return page_reader_fallback(reader, args);
    amount = PyLong_AsLongLong(args[0]);
    offset = PyLong_AsLongLong(args[1]);
    if ((amount == -1 || offset == -1) && PyErr_Occurred()) {
        PyErr_Clear();
        return page_reader_fallback(reader, args);
    }
    if (amount != size || offset <= 0 || offset % size != 0)
        return page_reader_fallback(reader, args); /* page 1, or not one whole page */
    /* a partial replica's missing pages are fetched by the class's method; `lazy` can be set
     * while this file is open (a later connection to the same database finds the replica partial) */
    lazy = PyObject_GetAttr(reader->state, lazy_name);
    if (lazy == NULL)
        return NULL;
    if (lazy != Py_None) {
        Py_DECREF(lazy);
        return page_reader_fallback(reader, args);
    }
    Py_DECREF(lazy);
    Py_BEGIN_ALLOW_THREADS
    do {
        got = pread(reader->fd, reader->slot.buf, (size_t)size, (off_t)offset);
    } while (got < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (got != size)
        return page_reader_fallback(reader, args); /* past the end, or an error: raised there */
    done = PyObject_CallNoArgs(reader->decrypt);
    if (done == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear(); /* a page that does not verify: the class's method names and records it */
        return page_reader_fallback(reader, args);
    }
    Py_DECREF(done);
    Py_INCREF(reader->page);
    return reader->page;
}

static void
page_reader_dealloc(PyObject *self)
{
    PageReaderObject *reader = (PageReaderObject *)self;
    if (reader->has_slot)
        PyBuffer_Release(&reader->slot);
    Py_XDECREF(reader->file_ref);
    Py_XDECREF(reader->base);
    Py_XDECREF(reader->state);
    Py_XDECREF(reader->decrypt);
    Py_XDECREF(reader->page);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject PageReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turso_sync._speedups.PageReader",
    .tp_basicsize = sizeof(PageReaderObject),
    .tp_dealloc = page_reader_dealloc,
    .tp_vectorcall_offset = offsetof(PageReaderObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "reader(amount, offset): a whole page but page 1 read and decrypted here, base(file, amount, offset) "
              "otherwise.",
};

static PyObject *
page_reader(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PageReaderObject *reader;
    Py_ssize_t page_len;
    long fd;
    (void)module;

    /* made ready here, on first use, so the module's set-up stays as it was */
    if (!(PageReaderType.tp_flags & Py_TPFLAGS_READY) && PyType_Ready(&PageReaderType) < 0)
        return NULL;
    if (lazy_name == NULL && (lazy_name = PyUnicode_InternFromString("lazy")) == NULL)
        return NULL;
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "page_reader() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyCallable_Check(args[1]) || !PyCallable_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "page_reader(): base and decrypt must be callable");
        return NULL;
    }
    if (!PyByteArray_CheckExact(args[4]) || !PyByteArray_CheckExact(args[5])) {
        PyErr_SetString(PyExc_TypeError, "page_reader(): slot and page must be bytearrays");
        return NULL;
    }
    page_len = PyByteArray_GET_SIZE(args[5]);
    if (PyByteArray_GET_SIZE(args[4]) != page_len || page_len <= 0) {
        PyErr_SetString(PyExc_ValueError, "page_reader(): slot and page must be bytearrays of the same, non-zero size");
        return NULL;
    }
    fd = PyLong_AsLong(args[3]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "page_reader(): %ld is not an open descriptor", fd);
        return NULL;
    }
    reader = PyObject_New(PageReaderObject, &PageReaderType);
    if (reader == NULL)
        return NULL;
    reader->vectorcall = page_reader_vectorcall;
    reader->file_ref = NULL;
    reader->base = NULL;
    reader->state = NULL;
    reader->decrypt = NULL;
    reader->page = NULL;
    reader->has_slot = 0;
    reader->fd = (int)fd;
    if (PyObject_GetBuffer(args[4], &reader->slot, PyBUF_WRITABLE) < 0)
        goto fail;
    reader->has_slot = 1;
    reader->file_ref = PyWeakref_NewRef(args[0], NULL);
    if (reader->file_ref == NULL)
        goto fail;
    Py_INCREF(args[1]);
    reader->base = args[1];
    Py_INCREF(args[2]);
    reader->state = args[2];
    Py_INCREF(args[6]);
    reader->decrypt = args[6];
    Py_INCREF(args[5]);
    reader->page = args[5];
    return (PyObject *)reader;
fail:
    Py_DECREF(reader);
    return NULL;
}

/* ==== end of xread ==== */

/* ==== xread (session 10), part 2: WAL recovery's reads of frames an install handed over ====
 *
 * wal_frame_reader(file, base, lookup, chain, frame_size, disk_frame) -> reader
 *     A callable reader(amount, offset), set as an EncryptedWALFile's instance attribute xRead.  It
 *     answers one read itself: frame k >= 2 read whole (amount == frame_size) right after frame
 *     k - 1 was (file._prev_tail == (k - 1, its salts and stored checksum)), with frame k's bytes in
 *     the read-ahead buffer (file._ahead == (first, bytes)), when lookup((salts as stored, k)) finds
 *     a HandedFrame whose `disk` is those bytes, the checksum stored before it is its `prev_ct`, and
 *     chain[(salt1, salt2, k - 1)] == (prev_ct, its `prev_pt`).  It then records
 *     chain[(salt1, salt2, k)] = (ct, pt), sets file._last_full_read = k and file._prev_tail, and
 *     returns the frame's `given` bytes: what EncryptedWALFile._read_full_frame and _handed_frame do
 *     on that path.  Every other read, and any of those checks that fails, is base(file, amount,
 *     offset) with nothing changed.  The file is held by a weak reference.
 */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *file_ref;
    PyObject *base;
    PyObject *lookup;
    PyObject *chain; /* dict */
    long long frame_size;
    long long disk_frame;
} WalFrameReaderObject;

static PyObject *wal_names[10];
static const char *const wal_name_text[10] = {"_prev_tail", "_ahead", "_last_full_read", "disk", "prev_ct",
                                              "prev_pt", "ct", "pt", "salts", "given"};
enum { N_PREV_TAIL, N_AHEAD, N_LAST_FULL_READ, N_DISK, N_PREV_CT, N_PREV_PT, N_CT, N_PT, N_SALTS, N_GIVEN };

static uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* A tuple of new references a, b (and c, unless NULL is passed as n == 2), which it steals; NULL when any is. */
static PyObject *
steal_tuple(Py_ssize_t n, PyObject *a, PyObject *b, PyObject *c)
{
    PyObject *t = (a == NULL || b == NULL || (n == 3 && c == NULL)) ? NULL : PyTuple_New(n);
    if (t == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    if (n == 3)
        PyTuple_SET_ITEM(t, 2, c);
    return t;
}

/* The frame handed over, or NULL with no error set when this read is not one for the fast path. */
static PyObject *
wal_handed(WalFrameReaderObject *reader, PyObject *file, long long index)
{
    PyObject *prev_tail = NULL, *ahead = NULL, *key = NULL, *handed = NULL, *disk = NULL, *prev_ct = NULL;
    PyObject *want = NULL, *salts = NULL, *hit, *prev_pt = NULL, *ct = NULL, *pt = NULL, *value = NULL;
    PyObject *tail = NULL, *given = NULL, *result = NULL;
    const unsigned char *raw, *tail_bytes;
    long long first, at;
    int same;

    prev_tail = PyObject_GetAttr(file, wal_names[N_PREV_TAIL]);
    if (prev_tail == NULL || !PyTuple_CheckExact(prev_tail) || PyTuple_GET_SIZE(prev_tail) != 2 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(prev_tail, 1)) || PyBytes_GET_SIZE(PyTuple_GET_ITEM(prev_tail, 1)) != 16 ||
        PyLong_AsLongLong(PyTuple_GET_ITEM(prev_tail, 0)) != index - 1)
        goto done;
    ahead = PyObject_GetAttr(file, wal_names[N_AHEAD]);
    if (ahead == NULL || !PyTuple_CheckExact(ahead) || PyTuple_GET_SIZE(ahead) != 2 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(ahead, 1)))
        goto done;
    first = PyLong_AsLongLong(PyTuple_GET_ITEM(ahead, 0));
    if (first == -1 && PyErr_Occurred())
        goto done;
    if (index < first)
        goto done;
    at = (index - first) * reader->disk_frame;
    if (at + reader->disk_frame > PyBytes_GET_SIZE(PyTuple_GET_ITEM(ahead, 1)))
        goto done;
    raw = (const unsigned char *)PyBytes_AS_STRING(PyTuple_GET_ITEM(ahead, 1)) + at;
    key = steal_tuple(2, PyBytes_FromStringAndSize((const char *)raw + 8, 8), PyLong_FromLongLong(index), NULL);
    if (key == NULL)
        goto done;
    handed = PyObject_CallOneArg(reader->lookup, key);
    if (handed == NULL || handed == Py_None)
        goto done;
    disk = PyObject_GetAttr(handed, wal_names[N_DISK]);
    if (disk == NULL || !PyBytes_CheckExact(disk) || PyBytes_GET_SIZE(disk) != reader->disk_frame ||
        memcmp(PyBytes_AS_STRING(disk), raw, (size_t)reader->disk_frame) != 0)
        goto done;
    /* the checksum stored before frame k, as read in frame k - 1 of the same WAL generation */
    tail_bytes = (const unsigned char *)PyBytes_AS_STRING(PyTuple_GET_ITEM(prev_tail, 1));
    if (memcmp(tail_bytes, raw + 8, 8) != 0)
        goto done;
    prev_ct = steal_tuple(2, PyLong_FromUnsignedLong(be32(tail_bytes + 8)), PyLong_FromUnsignedLong(be32(tail_bytes + 12)),
                          NULL);
    if (prev_ct == NULL)
        goto done;
    want = PyObject_GetAttr(handed, wal_names[N_PREV_CT]);
    if (want == NULL || (same = PyObject_RichCompareBool(prev_ct, want, Py_EQ)) != 1)
        goto done;
    salts = PyObject_GetAttr(handed, wal_names[N_SALTS]);
    if (salts == NULL || !PyTuple_CheckExact(salts) || PyTuple_GET_SIZE(salts) != 2)
        goto done;
    Py_DECREF(key);
    key = steal_tuple(3, Py_NewRef(PyTuple_GET_ITEM(salts, 0)), Py_NewRef(PyTuple_GET_ITEM(salts, 1)),
                      PyLong_FromLongLong(index - 1));
    if (key == NULL)
        goto done;
    hit = PyDict_GetItemWithError(reader->chain, key); /* borrowed */
    if (hit == NULL || !PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 2)
        goto done;
    Py_INCREF(hit);
    prev_pt = PyObject_GetAttr(handed, wal_names[N_PREV_PT]);
    same = prev_pt == NULL ? -1 : PyObject_RichCompareBool(PyTuple_GET_ITEM(hit, 0), prev_ct, Py_EQ);
    if (same == 1)
        same = PyObject_RichCompareBool(PyTuple_GET_ITEM(hit, 1), prev_pt, Py_EQ);
    Py_DECREF(hit);
    if (same != 1)
        goto done;
    ct = PyObject_GetAttr(handed, wal_names[N_CT]);
    pt = ct == NULL ? NULL : PyObject_GetAttr(handed, wal_names[N_PT]);
    given = pt == NULL ? NULL : PyObject_GetAttr(handed, wal_names[N_GIVEN]);
    if (given == NULL)
        goto done;
    Py_DECREF(key);
    key = steal_tuple(3, Py_NewRef(PyTuple_GET_ITEM(salts, 0)), Py_NewRef(PyTuple_GET_ITEM(salts, 1)),
                      PyLong_FromLongLong(index));
    value = key == NULL ? NULL : PyTuple_Pack(2, ct, pt);
    tail = value == NULL ? NULL
                         : steal_tuple(2, PyLong_FromLongLong(index), PyBytes_FromStringAndSize((const char *)raw + 8, 16),
                                       NULL);
    if (tail == NULL)
        goto done;
    /* the frame is taken: record it as _handed_frame and _read_full_frame do (the read-ahead stays) */
    if (PyDict_SetItem(reader->chain, key, value) < 0)
        goto done;
    Py_DECREF(key);
    key = PyLong_FromLongLong(index);
    if (key == NULL || PyObject_SetAttr(file, wal_names[N_LAST_FULL_READ], key) < 0 ||
        PyObject_SetAttr(file, wal_names[N_PREV_TAIL], tail) < 0)
        goto done;
    result = given;
    given = NULL;
done:
    Py_XDECREF(prev_tail);
    Py_XDECREF(ahead);
    Py_XDECREF(key);
    Py_XDECREF(handed);
    Py_XDECREF(disk);
    Py_XDECREF(prev_ct);
    Py_XDECREF(want);
    Py_XDECREF(salts);
    Py_XDECREF(prev_pt);
    Py_XDECREF(ct);
    Py_XDECREF(pt);
    Py_XDECREF(value);
    Py_XDECREF(tail);
    Py_XDECREF(given);
    return result;
}

static PyObject *
wal_frame_reader_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WalFrameReaderObject *reader = (WalFrameReaderObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *file, *call_args[3], *result;
    long long amount = -1, offset = -1, index = 0;

    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "WAL xRead reader takes exactly 2 positional arguments (amount, offset)");
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030D0000
    if (PyWeakref_GetRef(reader->file_ref, &file) < 0)
        return NULL;
    if (file == NULL) {
        PyErr_SetString(PyExc_ReferenceError, "WAL xRead reader: its file no longer exists");
        return NULL;
    }
#else
    file = PyWeakref_GetObject(reader->file_ref); /* borrowed */
    if (file == NULL)
        return NULL;
    if (file == Py_None) {
        PyErr_SetString(PyExc_ReferenceError, "WAL xRead reader: its file no longer exists");
        return NULL;
    }
    Py_INCREF(file);
#endif
    if (PyLong_CheckExact(args[0]) && PyLong_CheckExact(args[1])) {
        amount = PyLong_AsLongLong(args[0]);
        offset = PyLong_AsLongLong(args[1]);
        if (PyErr_Occurred())
            PyErr_Clear();
    }
    if (amount == reader->frame_size && offset >= 32 && (offset - 32) % reader->frame_size == 0)
        index = (offset - 32) / reader->frame_size + 1;
    if (index >= 2) { /* frame 1 ends a checksum rewrite's bookkeeping: the class's method reads it */
        result = wal_handed(reader, file, index);
        if (result != NULL || (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))) {
            Py_DECREF(file);
            return result;
        }
        PyErr_Clear(); /* anything unexpected: the long way decides, and raises what it raises */
    }
    call_args[0] = file;
    call_args[1] = args[0];
    call_args[2] = args[1];
    result = PyObject_Vectorcall(reader->base, call_args, 3, NULL);
    Py_DECREF(file);
    return result;
}

static void
wal_frame_reader_dealloc(PyObject *self)
{
    WalFrameReaderObject *reader = (WalFrameReaderObject *)self;
    Py_XDECREF(reader->file_ref);
    Py_XDECREF(reader->base);
    Py_XDECREF(reader->lookup);
    Py_XDECREF(reader->chain);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject WalFrameReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turso_sync._speedups.WalFrameReader",
    .tp_basicsize = sizeof(WalFrameReaderObject),
    .tp_dealloc = wal_frame_reader_dealloc,
    .tp_vectorcall_offset = offsetof(WalFrameReaderObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "reader(amount, offset): a frame an install handed over, read in order by WAL recovery; "
              "base(file, amount, offset) otherwise.",
};

static PyObject *
wal_frame_reader(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    WalFrameReaderObject *reader;
    long long frame_size, disk_frame;
    int i;
    (void)module;

    if (!(WalFrameReaderType.tp_flags & Py_TPFLAGS_READY) && PyType_Ready(&WalFrameReaderType) < 0)
        return NULL;
    for (i = 0; i < 10; i++)
        if (wal_names[i] == NULL && (wal_names[i] = PyUnicode_InternFromString(wal_name_text[i])) == NULL)
            return NULL;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "wal_frame_reader() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyCallable_Check(args[1]) || !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "wal_frame_reader(): base and lookup must be callable");
        return NULL;
    }
    if (!PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "wal_frame_reader(): chain must be a dict");
        return NULL;
    }
    frame_size = PyLong_AsLongLong(args[4]);
    disk_frame = PyLong_AsLongLong(args[5]);
    if ((frame_size == -1 || disk_frame == -1) && PyErr_Occurred())
        return NULL;
    if (frame_size <= 24 || disk_frame <= 24) {
        PyErr_SetString(PyExc_ValueError, "wal_frame_reader(): frame sizes must exceed the 24-byte frame header");
        return NULL;
    }
    reader = PyObject_New(WalFrameReaderObject, &WalFrameReaderType);
    if (reader == NULL)
        return NULL;
    reader->vectorcall = wal_frame_reader_vectorcall;
    reader->base = reader->lookup = reader->chain = NULL;
    reader->frame_size = frame_size;
    reader->disk_frame = disk_frame;
    reader->file_ref = PyWeakref_NewRef(args[0], NULL);
    if (reader->file_ref == NULL) {
        Py_DECREF(reader);
        return NULL;
    }
    Py_INCREF(args[1]);
    reader->base = args[1];
    Py_INCREF(args[2]);
    reader->lookup = args[2];
    Py_INCREF(args[3]);
    reader->chain = args[3];
    return (PyObject *)reader;
}

/* ==== end of xread, part 2 ==== */

static PyMethodDef speedups_methods[] = {
    {"wal_checksum", (PyCFunction)(void (*)(void))wal_checksum, METH_FASTCALL | METH_KEYWORDS,
     "wal_checksum(data, s1=0, s2=0, big_endian=False) -> (s1, s2)\n\n"
     "SQLite's WAL checksum of data (a multiple of 8 bytes) continuing from (s1, s2)."},
    {"file_control_router", (PyCFunction)(void (*)(void))file_control_router, METH_FASTCALL,
     "file_control_router(file, handled, hook, base) -> router\n\n"
     "A callable router(op, ptr): hook(file, op, ptr) when op is in handled (at most 8 ints),\n"
     "base(file, op, ptr) otherwise; the file is held by a weak reference."},
    {"page_reader", (PyCFunction)(void (*)(void))page_reader, METH_FASTCALL,
     "page_reader(file, base, state, fd, slot, page, decrypt) -> reader\n\n"
     "A callable reader(amount, offset) for a main database file in Turso's format: a whole page but\n"
     "page 1 is pread into slot and decrypt() into page, which it returns; anything else (or a partial\n"
     "replica, a short read, a page decrypt refuses) is base(file, amount, offset)."},
    {"wal_frame_reader", (PyCFunction)(void (*)(void))wal_frame_reader, METH_FASTCALL,
     "wal_frame_reader(file, base, lookup, chain, frame_size, disk_frame) -> reader\n\n"
     "A callable reader(amount, offset) for an encrypted WAL: a frame an install handed over, read whole\n"
     "right after the one before it (WAL recovery), answered from the hand-over; anything else is\n"
     "base(file, amount, offset)."},
    {NULL, NULL, 0, NULL},
};

static int
speedups_exec(PyObject *module)
{
    (void)module;
    return PyType_Ready(&RouterType);
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, (void *)speedups_exec},
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "turso_sync._speedups",
    "Compiled helpers for the local engine's hot loops; each has a pure-Python twin.",
    0,
    speedups_methods,
    speedups_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
