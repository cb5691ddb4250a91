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
#include <structmember.h>
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

/* The file a callable set on it holds by a weak reference (a new reference), or NULL with
 * ReferenceError once the file is gone; `who` names the callable in the message. */
static PyObject *
file_of(PyObject *file_ref, const char *who)
{
    PyObject *file;
#if PY_VERSION_HEX >= 0x030D0000
    if (PyWeakref_GetRef(file_ref, &file) < 0)
        return NULL;
    if (file == NULL) {
        PyErr_Format(PyExc_ReferenceError, "%s: its file no longer exists", who);
        return NULL;
    }
#else
    file = PyWeakref_GetObject(file_ref); /* borrowed */
    if (file == NULL)
        return NULL;
    if (file == Py_None) {
        PyErr_Format(PyExc_ReferenceError, "%s: its file no longer exists", who);
        return NULL;
    }
    Py_INCREF(file);
#endif
    return file;
}

/* target(file, args[0], args[1]), the file's reference consumed. */
static PyObject *
call_with_file(PyObject *target, PyObject *file, PyObject *const *args)
{
    PyObject *call_args[3] = {file, args[0], args[1]};
    PyObject *result = PyObject_Vectorcall(target, call_args, 3, NULL);
    Py_DECREF(file);
    return result;
}

static PyObject *
router_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RouterObject *router = (RouterObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *file, *target;
    long op;
    int i;

    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "xFileControl router takes exactly 2 positional arguments (op, ptr)");
        return NULL;
    }
    op = PyLong_AsLong(args[0]);
    if (op == -1 && PyErr_Occurred())
        return NULL;
    file = file_of(router->file_ref, "xFileControl router");
    if (file == NULL)
        return NULL;
    target = router->base;
    for (i = 0; i < router->nhandled; i++) {
        if (router->handled[i] == op) {
            target = router->hook;
            break;
        }
    }
    return call_with_file(target, file, args);
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
    PyObject *file = file_of(reader->file_ref, "xRead page reader");
    if (file == NULL)
        return NULL;
    return call_with_file(reader->base, file, args);
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
    /* the body reads (session 13), or all NULL: see wal_body */
    PyObject *raw_read; /* raw_read(file, amount, offset) -> bytes: the file as stored */
    PyObject *state;    /* its `in_checkpoint` */
    PyObject *slot;     /* bytearray(frame_size - 24): a body as stored */
    PyObject *page;     /* bytearray(frame_size - 24): decrypt() puts its plaintext here */
    PyObject *decrypt;  /* decrypt(): slot -> page, raises on a body that does not verify */
} WalFrameReaderObject;

static PyObject *name_in_checkpoint;

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

/* A frame's body read alone (what SQLite reads for a page it finds in the WAL), decrypted: the
 * page buffer, or NULL (an error set, or none when the read is not one for this path) to let the
 * class's method read it, as EncryptedWALFile._read_body does on its own path: outside a
 * checkpoint, a frame of any page but page 1, the whole frame there, a body that verifies. */
static PyObject *
wal_body(WalFrameReaderObject *reader, PyObject *file, long long offset)
{
    PyObject *flag, *raw, *call_args[3], *done;
    long long body = reader->frame_size - 24;
    int busy;

    flag = PyObject_GetAttr(reader->state, name_in_checkpoint);
    if (flag == NULL)
        return NULL;
    busy = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (busy != 0) /* a checkpoint reuses what _read_body keeps of the page: the class's method */
        return NULL;
    if (PyObject_SetAttr(file, wal_names[N_PREV_TAIL], Py_None) < 0 ||
        PyObject_SetAttr(file, wal_names[N_AHEAD], Py_None) < 0)
        return NULL;
    call_args[0] = file;
    call_args[1] = PyLong_FromLongLong(reader->frame_size);
    call_args[2] = PyLong_FromLongLong(offset - 24);
    raw = (call_args[1] == NULL || call_args[2] == NULL) ? NULL : PyObject_Vectorcall(reader->raw_read, call_args, 3, NULL);
    Py_XDECREF(call_args[1]);
    Py_XDECREF(call_args[2]);
    if (raw == NULL)
        return NULL;
    if (!PyBytes_CheckExact(raw) || PyBytes_GET_SIZE(raw) != reader->frame_size ||
        be32((const unsigned char *)PyBytes_AS_STRING(raw)) == 1) {
        Py_DECREF(raw); /* short (past the end), or page 1: the class's method */
        return NULL;
    }
    memcpy(PyByteArray_AS_STRING(reader->slot), PyBytes_AS_STRING(raw) + 24, (size_t)body);
    Py_DECREF(raw);
    done = PyObject_CallNoArgs(reader->decrypt);
    if (done == NULL)
        return NULL; /* refused: the class's method reads it again and says which page */
    Py_DECREF(done);
    return Py_NewRef(reader->page);
}

static PyObject *
wal_frame_reader_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WalFrameReaderObject *reader = (WalFrameReaderObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *file, *result;
    long long amount = -1, offset = -1, index = 0;

    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "WAL xRead reader takes exactly 2 positional arguments (amount, offset)");
        return NULL;
    }
    file = file_of(reader->file_ref, "WAL xRead reader");
    if (file == NULL)
        return NULL;
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
    if (reader->raw_read != NULL && amount == reader->frame_size - 24 && offset >= 32 + 24 &&
        (offset - 32 - 24) % reader->frame_size == 0) {
        result = wal_body(reader, file, offset);
        if (result != NULL || (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))) {
            Py_DECREF(file);
            return result;
        }
        PyErr_Clear(); /* the class's method reads it, and raises what it raises */
    }
    return call_with_file(reader->base, file, args);
}

static void
wal_frame_reader_dealloc(PyObject *self)
{
    WalFrameReaderObject *reader = (WalFrameReaderObject *)self;
    Py_XDECREF(reader->file_ref);
    Py_XDECREF(reader->base);
    Py_XDECREF(reader->lookup);
    Py_XDECREF(reader->chain);
    Py_XDECREF(reader->raw_read);
    Py_XDECREF(reader->state);
    Py_XDECREF(reader->slot);
    Py_XDECREF(reader->page);
    Py_XDECREF(reader->decrypt);
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
    if (name_in_checkpoint == NULL && (name_in_checkpoint = PyUnicode_InternFromString("in_checkpoint")) == NULL)
        return NULL;
    if (nargs != 6 && nargs != 11) {
        PyErr_Format(PyExc_TypeError, "wal_frame_reader() takes 6 or 11 arguments (%zd given)", nargs);
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
    if (nargs == 11) {
        if (!PyCallable_Check(args[6]) || !PyCallable_Check(args[10])) {
            PyErr_SetString(PyExc_TypeError, "wal_frame_reader(): raw_read and decrypt must be callable");
            return NULL;
        }
        if (!PyByteArray_CheckExact(args[8]) || !PyByteArray_CheckExact(args[9]) ||
            PyByteArray_GET_SIZE(args[8]) != frame_size - 24 || PyByteArray_GET_SIZE(args[9]) != frame_size - 24 ||
            disk_frame != frame_size) {
            PyErr_SetString(PyExc_ValueError,
                            "wal_frame_reader(): slot and page must be bytearrays of a frame's body, in a WAL whose "
                            "frames are stored at SQLite's size");
            return NULL;
        }
    }
    reader = PyObject_New(WalFrameReaderObject, &WalFrameReaderType);
    if (reader == NULL)
        return NULL;
    reader->vectorcall = wal_frame_reader_vectorcall;
    reader->base = reader->lookup = reader->chain = NULL;
    reader->raw_read = reader->state = reader->slot = reader->page = reader->decrypt = NULL;
    if (nargs == 11) {
        reader->raw_read = Py_NewRef(args[6]);
        reader->state = Py_NewRef(args[7]);
        reader->slot = Py_NewRef(args[8]);
        reader->page = Py_NewRef(args[9]);
        reader->decrypt = Py_NewRef(args[10]);
    }
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

/* ---- cursor (session 10): the DB-API statement path --------------------------------------------
 *
 * CursorBase is the base type of turso_sync.local.connection.Cursor when this module is used: it
 * holds the cursor's per-statement state as C members (connection, _cursor, row_factory, _rows,
 * _ahead, _columns, _query, _description, rowcount, lastrowid, _closed) and runs the common path of
 * Cursor.execute and Cursor.fetchone without a Python frame.  ConnectionBase, the base type of
 * Connection, does the same for Connection.execute (it builds the Cursor as the Python method does).
 * Each step is the one the pure-Python twins in connection.py take (they are used when this module
 * is absent or refused), and iter(cursor) gives a C iterator that yields what Cursor.__iter__'s
 * generator yields; everything off the common path calls the Python methods: _check (closed),
 * _statement (an uncached text), _execute_captured (a replica's write), _begin_if_needed, _run (a
 * statement of several, a row factory, one SQLite could not prepare), _failed and
 * Connection._translate (errors, raised "from None" with the original as __context__).
 *
 * cursor_setup(cursor_class, unread, unshared, run_errors, fetch_errors, statement_class) tells this
 * module the Cursor class that ConnectionBase.execute makes, the _UNREAD marker, the reference count
 * (as sys.getrefcount reports it) of an idle APSW cursor that nothing else holds (-1: never reuse),
 * the exceptions of APSW's execute that go to Cursor._failed, those of a fetch that go to
 * Connection._translate, and the Statement class whose flags (slots) are read in place.
 */

typedef struct {
    PyObject_HEAD
    PyObject *connection;
    PyObject *cursor; /* _cursor: the APSW cursor */
    PyObject *row_factory;
    PyObject *rows;  /* _rows */
    PyObject *ahead; /* _ahead */
    PyObject *columns;
    PyObject *query;
    PyObject *description;
    PyObject *rowcount;
    PyObject *lastrowid;
    char closed;
} CursorBaseObject;

/* Connection's fields that every statement reads, as members of its base type (the same names) */
typedef struct {
    PyObject_HEAD
    PyObject *closed; /* _closed */
    PyObject *statements;
    PyObject *capture;
    PyObject *isolation_level;
    PyObject *db;
    PyObject *idle;
    PyObject *idle_before;
    PyObject *row_factory;
} ConnectionBaseObject;

static PyTypeObject CursorBaseType;
static PyTypeObject ConnectionBaseType;
static PyObject *cursor_class;     /* the Python Cursor (a subtype of CursorBase) */
static PyObject *cursor_unread;    /* connection._UNREAD */
static Py_ssize_t cursor_unshared; /* as sys.getrefcount counts it; -1 never */
static PyObject *cursor_run_errors;
static PyObject *cursor_fetch_errors;
static PyObject *cursor_minus_one;
static PyObject *cursor_empty_tuple;

static PyObject *s_closed, *s_statements, *s_statement, *s_capture, *s_is_read, *s_execute_captured,
    *s_writes_rows, *s_isolation_level, *s_db, *s_get_autocommit, *s_begin_if_needed, *s_several,
    *s_returns_rows, *s_prepared, *s_run, *s_execute, *s_failed, *s_idle, *s_idle_before, *s_changes,
    *s_last_insert_rowid, *s_check, *s_translate, *s_cursor, *s_row_factory, *s_sql, *s_parameters, *s_connection;

#define CURSOR_NOT_SET(o) ((o) == NULL || (o) == Py_None)

/* conn.<name> (a new reference): the member itself on a ConnectionBase, getattr on anything else */
static PyObject *
conn_get(PyObject *conn, size_t offset, PyObject *name)
{
    PyObject *value;
    if (!PyObject_TypeCheck(conn, &ConnectionBaseType))
        return PyObject_GetAttr(conn, name);
    value = *(PyObject **)((char *)conn + offset);
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    Py_INCREF(value);
    return value;
}

static int
conn_set(PyObject *conn, size_t offset, PyObject *name, PyObject *value)
{
    PyObject **slot, *old;
    if (!PyObject_TypeCheck(conn, &ConnectionBaseType))
        return PyObject_SetAttr(conn, name, value);
    slot = (PyObject **)((char *)conn + offset);
    old = *slot;
    Py_INCREF(value);
    *slot = value;
    Py_XDECREF(old);
    return 0;
}

#define CONN_GET(conn, field, name) conn_get((conn), offsetof(ConnectionBaseObject, field), (name))
#define CONN_SET(conn, field, name, value) conn_set((conn), offsetof(ConnectionBaseObject, field), (name), (value))

/* conn._closed as a truth value */
static int
conn_closed(PyObject *conn)
{
    PyObject *value = CONN_GET(conn, closed, s_closed);
    int truth;
    if (value == NULL)
        return -1;
    truth = value == Py_False ? 0 : value == Py_True ? 1 : PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* getattr(obj, name) as a truth value: 1, 0 or -1 with an exception set */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    int truth;
    if (value == NULL)
        return -1;
    truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* Statement's flags (local/statement.py, a dataclass with slots): read from their slots when the
 * statement is of the class cursor_setup was given, whose member descriptors told the offsets */
enum { STATEMENT_SEVERAL, STATEMENT_RETURNS_ROWS, STATEMENT_PREPARED, STATEMENT_IS_READ, STATEMENT_WRITES_ROWS, STATEMENT_FLAGS };
static PyTypeObject *statement_type;
static Py_ssize_t statement_offsets[STATEMENT_FLAGS];
static PyObject **statement_names[STATEMENT_FLAGS] = {&s_several, &s_returns_rows, &s_prepared, &s_is_read,
                                                      &s_writes_rows};

static int
statement_flag(PyObject *statement, int flag)
{
    PyObject *value;
    if (Py_TYPE(statement) != statement_type)
        return attr_true(statement, *statement_names[flag]);
    value = *(PyObject **)((char *)statement + statement_offsets[flag]);
    if (value == Py_False)
        return 0;
    if (value == Py_True)
        return 1;
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, *statement_names[flag]);
        return -1;
    }
    return PyObject_IsTrue(value);
}

static PyObject *
call_method(PyObject *obj, PyObject *name, PyObject *a, PyObject *b, PyObject *c, PyObject *d)
{
    PyObject *args[5] = {obj, a, b, c, d};
    size_t n = 1 + (a != NULL) + (b != NULL) + (c != NULL) + (d != NULL);
    return PyObject_VectorcallMethod(name, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* The exception set now, replaced by `translator(exc, extra)` raised "from None" (its __context__
 * the original, as a raise inside an except block gives); the exception is kept as it is when it
 * is not one of `matching`.  Returns NULL always. */
static PyObject *
raise_translated(PyObject *matching, PyObject *owner, PyObject *translator, PyObject *extra)
{
    PyObject *type, *value, *tb, *err;
    if (!PyErr_ExceptionMatches(matching))
        return NULL;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    err = call_method(owner, translator, value, extra, NULL, NULL);
    if (err == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    if (!PyExceptionInstance_Check(err)) {
        Py_DECREF(value);
        PyErr_Format(PyExc_TypeError, "%U() returned %.50s, not an exception", translator, Py_TYPE(err)->tp_name);
        Py_DECREF(err);
        return NULL;
    }
    PyException_SetContext(err, value); /* steals value */
    PyException_SetCause(err, NULL);    /* and sets __suppress_context__ */
    type = (PyObject *)Py_TYPE(err);
    Py_INCREF(type);
    PyErr_Restore(type, err, NULL);
    return NULL;
}

static void
set_field(PyObject **field, PyObject *value)
{
    PyObject *old = *field;
    Py_XINCREF(value);
    *field = value;
    Py_XDECREF(old);
}

static CursorBaseObject *
cursor_alloc(PyTypeObject *type)
{
    CursorBaseObject *self = (CursorBaseObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(cursor_minus_one);
    self->rowcount = cursor_minus_one;
    return self;
}

static PyObject *
cursorbase_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    if (cursor_minus_one == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "CursorBase: cursor_setup() was not called");
        return NULL;
    }
    return (PyObject *)cursor_alloc(type);
}

/* the statement finished: its APSW cursor is idle (Cursor._idle_now) */
static int
idle_now(PyObject *conn, PyObject *cursor)
{
    PyObject *idle = CONN_GET(conn, idle, s_idle);
    int rc = 0;
    if (idle == NULL)
        return -1;
    if (idle != cursor) {
        rc = CONN_SET(conn, idle_before, s_idle_before, idle);
        if (rc == 0)
            rc = CONN_SET(conn, idle, s_idle, cursor);
    }
    Py_DECREF(idle);
    return rc;
}

/* rows pending: off Connection._idle (Cursor._not_idle) */
static int
not_idle(PyObject *conn, PyObject *cursor)
{
    PyObject *idle = CONN_GET(conn, idle, s_idle);
    int rc = 0;
    if (idle == NULL)
        return -1;
    if (idle == cursor) {
        rc = CONN_SET(conn, idle, s_idle, Py_None);
    }
    else {
        Py_DECREF(idle);
        idle = CONN_GET(conn, idle_before, s_idle_before);
        if (idle == NULL)
            return -1;
        if (idle == cursor)
            rc = CONN_SET(conn, idle_before, s_idle_before, Py_None);
    }
    Py_DECREF(idle);
    return rc;
}

/* Cursor._run for a statement of one, without a row factory unless it returns no rows, that SQLite
 * prepared; the others go to the Python method. */
static PyObject *
cursor_run(CursorBaseObject *self, PyObject *conn, PyObject *sql, PyObject *params, PyObject *statement,
           int writes)
{
    PyObject *cursor, *result, *db, *value;
    int several, returns, prepared = 1;

    several = statement_flag(statement, STATEMENT_SEVERAL);
    if (several < 0)
        return NULL;
    returns = statement_flag(statement, STATEMENT_RETURNS_ROWS);
    if (returns < 0)
        return NULL;
    if (!returns) {
        prepared = statement_flag(statement, STATEMENT_PREPARED);
        if (prepared < 0)
            return NULL;
    }
    if (several || !prepared || (returns && !CURSOR_NOT_SET(self->row_factory)))
        return call_method((PyObject *)self, s_run, sql, params, statement, NULL);
    cursor = self->cursor;
    if (cursor == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_cursor");
        return NULL;
    }
    Py_INCREF(cursor);
    result = call_method(cursor, s_execute, sql, params, NULL, NULL);
    if (result == NULL) {
        Py_DECREF(cursor);
        return raise_translated(cursor_run_errors, (PyObject *)self, s_failed, sql);
    }
    Py_DECREF(result);
    if (returns) {
        /* its columns are read only if description is asked for (Cursor._run) */
        PyObject *query = PyTuple_Pack(2, sql, params);
        if (query == NULL)
            goto fail;
        Py_XSETREF(self->query, query);
        set_field(&self->columns, cursor_unread);
        set_field(&self->description, NULL);
        set_field(&self->rows, cursor); /* a query's first row may be pending */
        if (not_idle(conn, cursor) < 0)
            goto fail;
    }
    else {
        set_field(&self->columns, NULL);
        set_field(&self->description, NULL);
        set_field(&self->rows, NULL);
        if (idle_now(conn, cursor) < 0)
            goto fail;
    }
    Py_DECREF(cursor);
    set_field(&self->ahead, NULL);
    db = CONN_GET(conn, db, s_db);
    if (db == NULL)
        return NULL;
    if (writes) {
        value = call_method(db, s_changes, NULL, NULL, NULL, NULL);
        if (value == NULL)
            goto fail_db;
        Py_XSETREF(self->rowcount, value);
    }
    else {
        set_field(&self->rowcount, cursor_minus_one);
    }
    value = call_method(db, s_last_insert_rowid, NULL, NULL, NULL, NULL);
    if (value == NULL)
        goto fail_db;
    Py_XSETREF(self->lastrowid, value);
    Py_DECREF(db);
    Py_INCREF(self);
    return (PyObject *)self;
fail:
    Py_DECREF(cursor);
    return NULL;
fail_db:
    Py_DECREF(db);
    return NULL;
}

/* Cursor.execute: the statement's facts, the replica's capture, the implicit BEGIN, then _run */
static PyObject *
cursor_execute_impl(CursorBaseObject *self, PyObject *sql, PyObject *params)
{
    PyObject *conn, *statements, *statement = NULL, *capture, *result = NULL;
    int truth, writes;

    conn = self->connection;
    if (conn == NULL) {
        PyErr_SetString(PyExc_AttributeError, "connection");
        return NULL;
    }
    Py_INCREF(conn);
    truth = self->closed ? 1 : conn_closed(conn);
    if (truth < 0)
        goto done;
    if (truth) {
        result = call_method((PyObject *)self, s_check, NULL, NULL, NULL, NULL);
        if (result == NULL)
            goto done;
        Py_CLEAR(result);
    }
    statements = CONN_GET(conn, statements, s_statements);
    if (statements == NULL)
        goto done;
    if (PyDict_CheckExact(statements)) {
        statement = PyDict_GetItemWithError(statements, sql);
        Py_XINCREF(statement);
    }
    else {
        statement = PyObject_CallMethod(statements, "get", "O", sql);
    }
    Py_DECREF(statements);
    if (statement == NULL && PyErr_Occurred())
        goto done;
    if (statement != NULL) {
        truth = PyObject_IsTrue(statement);
        if (truth < 0)
            goto done;
        if (!truth)
            Py_CLEAR(statement);
    }
    if (statement == NULL) {
        statement = call_method(conn, s_statement, sql, NULL, NULL, NULL);
        if (statement == NULL)
            goto done;
    }
    capture = CONN_GET(conn, capture, s_capture);
    if (capture == NULL)
        goto done;
    if (capture != Py_None) {
        truth = statement_flag(statement, STATEMENT_IS_READ);
        if (truth <= 0) {
            if (truth == 0)
                result = call_method((PyObject *)self, s_execute_captured, sql, params, statement, capture);
            Py_DECREF(capture);
            goto done;
        }
    }
    Py_DECREF(capture);
    writes = statement_flag(statement, STATEMENT_WRITES_ROWS);
    if (writes < 0)
        goto done;
    if (writes) {
        PyObject *level = CONN_GET(conn, isolation_level, s_isolation_level), *db, *autocommit;
        if (level == NULL)
            goto done;
        truth = level != Py_None;
        Py_DECREF(level);
        if (truth) {
            db = CONN_GET(conn, db, s_db);
            if (db == NULL)
                goto done;
            autocommit = call_method(db, s_get_autocommit, NULL, NULL, NULL, NULL);
            Py_DECREF(db);
            if (autocommit == NULL)
                goto done;
            truth = PyObject_IsTrue(autocommit);
            Py_DECREF(autocommit);
            if (truth < 0)
                goto done;
            if (truth) {
                result = call_method(conn, s_begin_if_needed, sql, NULL, NULL, NULL);
                if (result == NULL)
                    goto done;
                Py_CLEAR(result);
            }
        }
    }
    result = cursor_run(self, conn, sql, params, statement, writes);
done:
    Py_XDECREF(statement);
    Py_DECREF(conn);
    return result;
}

/* (sql, parameters=()) from a fastcall */
static int
sql_and_parameters(const char *name, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **sql,
                   PyObject **params)
{
    Py_ssize_t i, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    *sql = nargs > 0 ? args[0] : NULL;
    *params = nargs > 1 ? args[1] : NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 2 arguments (%zd given)", name, nargs);
        return -1;
    }
    for (i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i), **slot;
        if (PyUnicode_Compare(key, s_sql) == 0)
            slot = sql;
        else if (PyUnicode_Compare(key, s_parameters) == 0)
            slot = params;
        else {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", name, key);
            return -1;
        }
        if (*slot != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'", name, key);
            return -1;
        }
        *slot = args[nargs + i];
    }
    if (*sql == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'sql'", name);
        return -1;
    }
    if (*params == NULL)
        *params = cursor_empty_tuple;
    return 0;
}

static PyObject *
cursorbase_execute(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *sql, *params;
    if (sql_and_parameters("execute", args, nargs, kwnames, &sql, &params) < 0)
        return NULL;
    return cursor_execute_impl((CursorBaseObject *)self, sql, params);
}

static PyObject *
cursorbase_fetchone(PyObject *op, PyObject *unused)
{
    CursorBaseObject *self = (CursorBaseObject *)op;
    PyObject *conn, *rows, *row = NULL, *ahead, *factory, *result = NULL;
    int truth;
    (void)unused;

    conn = self->connection;
    if (conn == NULL) {
        PyErr_SetString(PyExc_AttributeError, "connection");
        return NULL;
    }
    Py_INCREF(conn);
    truth = self->closed ? 1 : conn_closed(conn);
    if (truth < 0)
        goto done;
    if (truth) {
        result = call_method(op, s_check, NULL, NULL, NULL, NULL);
        if (result == NULL)
            goto done;
        Py_CLEAR(result);
    }
    rows = self->rows;
    if (CURSOR_NOT_SET(rows)) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    Py_INCREF(rows);
    if (CURSOR_NOT_SET(self->ahead)) {
        row = PyIter_Next(rows);
        if (row == NULL) {
            if (PyErr_Occurred()) {
                raise_translated(cursor_fetch_errors, conn, s_translate, NULL);
            }
            else {
                set_field(&self->rows, NULL);
                if (self->cursor == NULL)
                    PyErr_SetString(PyExc_AttributeError, "_cursor");
                else if (idle_now(conn, self->cursor) == 0) {
                    result = Py_None;
                    Py_INCREF(result);
                }
            }
            Py_DECREF(rows);
            goto done;
        }
    }
    else {
        row = self->ahead; /* the reference moves to row */
        self->ahead = NULL;
    }
    /* look one row ahead: when this was the last row the statement finishes now and its read
     * snapshot is released (Cursor.fetchone) */
    ahead = PyIter_Next(rows);
    Py_DECREF(rows);
    if (ahead == NULL) {
        if (PyErr_Occurred()) {
            raise_translated(cursor_fetch_errors, conn, s_translate, NULL);
            goto done;
        }
        set_field(&self->rows, NULL);
        if (self->cursor == NULL) {
            PyErr_SetString(PyExc_AttributeError, "_cursor");
            goto done;
        }
        if (idle_now(conn, self->cursor) < 0)
            goto done;
    }
    else {
        Py_XSETREF(self->ahead, ahead);
    }
    factory = self->row_factory;
    if (CURSOR_NOT_SET(factory)) {
        result = row;
        row = NULL;
    }
    else {
        PyObject *call_args[2] = {op, row};
        Py_INCREF(factory);
        result = PyObject_Vectorcall(factory, call_args, 2, NULL);
        Py_DECREF(factory);
    }
done:
    Py_XDECREF(row);
    Py_DECREF(conn);
    return result;
}

/* Cursor.fetchall: the looked-ahead row and the rest, each through the row factory; the statement
 * finishes (idle) unless an error stopped it */
static PyObject *
cursorbase_fetchall(PyObject *op, PyObject *unused)
{
    CursorBaseObject *self = (CursorBaseObject *)op;
    PyObject *conn, *rows = NULL, *ahead = NULL, *factory = NULL, *out = NULL, *row, *item;
    int truth;
    (void)unused;

    conn = self->connection;
    if (conn == NULL) {
        PyErr_SetObject(PyExc_AttributeError, s_connection);
        return NULL;
    }
    Py_INCREF(conn);
    truth = self->closed ? 1 : conn_closed(conn);
    if (truth < 0)
        goto fail;
    if (truth) {
        item = call_method(op, s_check, NULL, NULL, NULL, NULL);
        if (item == NULL)
            goto fail;
        Py_DECREF(item);
    }
    out = PyList_New(0);
    if (out == NULL || CURSOR_NOT_SET(self->rows))
        goto done;
    rows = PyObject_GetIter(self->rows);
    if (rows == NULL)
        goto translate;
    if (!CURSOR_NOT_SET(self->ahead)) {
        ahead = self->ahead;
        Py_INCREF(ahead);
    }
    if (!CURSOR_NOT_SET(self->row_factory)) {
        factory = self->row_factory;
        Py_INCREF(factory);
    }
    row = ahead;
    if (row != NULL)
        Py_INCREF(row);
    else
        row = PyIter_Next(rows);
    while (row != NULL) {
        if (factory == NULL) {
            item = row;
        }
        else {
            PyObject *call_args[2] = {op, row};
            item = PyObject_Vectorcall(factory, call_args, 2, NULL);
            Py_DECREF(row);
            if (item == NULL)
                goto translate;
        }
        truth = PyList_Append(out, item);
        Py_DECREF(item);
        if (truth < 0)
            goto fail;
        row = PyIter_Next(rows);
    }
    if (PyErr_Occurred())
        goto translate;
    set_field(&self->rows, NULL);
    set_field(&self->ahead, NULL);
    if (self->cursor == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_cursor");
        goto fail;
    }
    if (idle_now(conn, self->cursor) < 0)
        goto fail;
done:
    Py_XDECREF(rows);
    Py_XDECREF(ahead);
    Py_XDECREF(factory);
    Py_DECREF(conn);
    return out;
translate:
    raise_translated(cursor_fetch_errors, conn, s_translate, NULL);
fail:
    Py_CLEAR(out);
    goto done;
}

static int
cursorbase_traverse(PyObject *op, visitproc visit, void *arg)
{
    CursorBaseObject *self = (CursorBaseObject *)op;
    Py_VISIT(self->connection);
    Py_VISIT(self->cursor);
    Py_VISIT(self->row_factory);
    Py_VISIT(self->rows);
    Py_VISIT(self->ahead);
    Py_VISIT(self->columns);
    Py_VISIT(self->query);
    Py_VISIT(self->description);
    Py_VISIT(self->rowcount);
    Py_VISIT(self->lastrowid);
    return 0;
}

static int
cursorbase_clear(PyObject *op)
{
    CursorBaseObject *self = (CursorBaseObject *)op;
    Py_CLEAR(self->connection);
    Py_CLEAR(self->cursor);
    Py_CLEAR(self->row_factory);
    Py_CLEAR(self->rows);
    Py_CLEAR(self->ahead);
    Py_CLEAR(self->columns);
    Py_CLEAR(self->query);
    Py_CLEAR(self->description);
    Py_CLEAR(self->rowcount);
    Py_CLEAR(self->lastrowid);
    return 0;
}

static void
cursorbase_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    cursorbase_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyMemberDef cursorbase_members[] = {
    {"connection", T_OBJECT_EX, offsetof(CursorBaseObject, connection), 0, "the Connection"},
    {"_cursor", T_OBJECT_EX, offsetof(CursorBaseObject, cursor), 0, "the APSW cursor"},
    {"row_factory", T_OBJECT, offsetof(CursorBaseObject, row_factory), 0, "row_factory(cursor, row) or None"},
    {"_rows", T_OBJECT, offsetof(CursorBaseObject, rows), 0, NULL},
    {"_ahead", T_OBJECT, offsetof(CursorBaseObject, ahead), 0, NULL},
    {"_columns", T_OBJECT, offsetof(CursorBaseObject, columns), 0, NULL},
    {"_query", T_OBJECT, offsetof(CursorBaseObject, query), 0, NULL},
    {"_description", T_OBJECT, offsetof(CursorBaseObject, description), 0, NULL},
    {"rowcount", T_OBJECT_EX, offsetof(CursorBaseObject, rowcount), 0, "rows the last statement changed, or -1"},
    {"lastrowid", T_OBJECT, offsetof(CursorBaseObject, lastrowid), 0, "the last inserted rowid, or None"},
    {"_closed", T_BOOL, offsetof(CursorBaseObject, closed), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* iter(cursor): Cursor.__iter__'s generator, step by step.  Like the generator, it checks the cursor
 * at its first next(), yields the row fetchone looked ahead at (through Cursor._convert), then the
 * rows of the cursor's _rows at that moment through the row factory of that moment, finishes the
 * statement after its last row (Cursor._idle_now), translates APSW's errors, and is finished
 * after an error. */
enum { ITER_NEW, ITER_AHEAD_DONE, ITER_ROWS, ITER_FINISHED };

typedef struct {
    PyObject_HEAD
    PyObject *cursor;
    PyObject *rows;
    PyObject *convert;
    int state;
} CursorIterObject;

static PyObject *s_convert, *s_idle_now_method;

/* (no getattr here: the exception is still set, and only raise_translated takes it off first) */
static PyObject *
cursoriter_translate(CursorIterObject *it)
{
    PyObject *conn = ((CursorBaseObject *)it->cursor)->connection;
    if (conn == NULL || !PyErr_ExceptionMatches(cursor_fetch_errors))
        return NULL;
    Py_INCREF(conn);
    raise_translated(cursor_fetch_errors, conn, s_translate, NULL);
    Py_DECREF(conn);
    return NULL;
}

static PyObject *
cursoriter_next(PyObject *op)
{
    CursorIterObject *it = (CursorIterObject *)op;
    CursorBaseObject *cursor = (CursorBaseObject *)it->cursor;
    PyObject *row, *result;

    if (it->state == ITER_FINISHED)
        return NULL;
    if (it->state == ITER_NEW) {
        int closed;
        it->state = ITER_FINISHED; /* until the checks pass */
        if (cursor->connection == NULL) {
            PyErr_SetObject(PyExc_AttributeError, s_connection);
            return NULL;
        }
        closed = cursor->closed ? 1 : conn_closed(cursor->connection);
        if (closed < 0)
            return NULL;
        if (closed) {
            result = call_method(it->cursor, s_check, NULL, NULL, NULL, NULL);
            if (result == NULL)
                return NULL;
            Py_DECREF(result);
        }
        if (!CURSOR_NOT_SET(cursor->ahead)) {
            PyObject *ahead = cursor->ahead; /* the reference moves here */
            cursor->ahead = NULL;
            result = call_method(it->cursor, s_convert, ahead, NULL, NULL, NULL);
            Py_DECREF(ahead);
            if (result != NULL)
                it->state = ITER_AHEAD_DONE;
            return result;
        }
    }
    if (it->state != ITER_ROWS) {
        it->state = ITER_FINISHED;
        if (CURSOR_NOT_SET(cursor->rows))
            return NULL;
        it->rows = PyObject_GetIter(cursor->rows);
        if (it->rows == NULL)
            return NULL;
        if (!CURSOR_NOT_SET(cursor->row_factory)) {
            Py_INCREF(cursor->row_factory);
            it->convert = cursor->row_factory;
        }
        it->state = ITER_ROWS;
    }
    row = PyIter_Next(it->rows);
    if (row == NULL) {
        it->state = ITER_FINISHED;
        if (PyErr_Occurred())
            return cursoriter_translate(it);
        Py_CLEAR(it->rows);
        set_field(&cursor->rows, NULL);
        result = call_method(it->cursor, s_idle_now_method, NULL, NULL, NULL, NULL);
        Py_XDECREF(result);
        return NULL;
    }
    if (it->convert == NULL)
        return row;
    {
        PyObject *call_args[2] = {it->cursor, row};
        result = PyObject_Vectorcall(it->convert, call_args, 2, NULL);
    }
    Py_DECREF(row);
    if (result == NULL) {
        it->state = ITER_FINISHED;
        return cursoriter_translate(it);
    }
    return result;
}

static int
cursoriter_traverse(PyObject *op, visitproc visit, void *arg)
{
    CursorIterObject *it = (CursorIterObject *)op;
    Py_VISIT(it->cursor);
    Py_VISIT(it->rows);
    Py_VISIT(it->convert);
    return 0;
}

static int
cursoriter_clear(PyObject *op)
{
    CursorIterObject *it = (CursorIterObject *)op;
    Py_CLEAR(it->cursor);
    Py_CLEAR(it->rows);
    Py_CLEAR(it->convert);
    return 0;
}

static void
cursoriter_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    cursoriter_clear(op);
    PyObject_GC_Del(op);
}

static PyTypeObject CursorIterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turso_sync._speedups.CursorIterator",
    .tp_basicsize = sizeof(CursorIterObject),
    .tp_dealloc = cursoriter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The rows of a Cursor, as Cursor.__iter__ yields them.",
    .tp_traverse = cursoriter_traverse,
    .tp_clear = cursoriter_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = cursoriter_next,
};

static PyObject *
cursorbase_iter(PyObject *op)
{
    CursorIterObject *it = PyObject_GC_New(CursorIterObject, &CursorIterType);
    if (it == NULL)
        return NULL;
    Py_INCREF(op);
    it->cursor = op;
    it->rows = NULL;
    it->convert = NULL;
    it->state = ITER_NEW;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

static PyMethodDef cursorbase_methods[] = {
    {"execute", (PyCFunction)(void (*)(void))cursorbase_execute, METH_FASTCALL | METH_KEYWORDS,
     "Run one statement with parameters by position (?) or by name (:name)."},
    {"fetchone", cursorbase_fetchone, METH_NOARGS, "The next row, or None."},
    {"fetchall", cursorbase_fetchall, METH_NOARGS, "All remaining rows."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CursorBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turso_sync._speedups.CursorBase",
    .tp_basicsize = sizeof(CursorBaseObject),
    .tp_dealloc = cursorbase_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The compiled base of the DB-API Cursor: its state and the common path of execute and fetchone.",
    .tp_traverse = cursorbase_traverse,
    .tp_clear = cursorbase_clear,
    .tp_iter = cursorbase_iter,
    .tp_methods = cursorbase_methods,
    .tp_members = cursorbase_members,
    .tp_new = cursorbase_new,
};

/* Connection.execute: a new Cursor (as Cursor.__init__ makes it) and its execute */
static PyObject *
connectionbase_execute(PyObject *conn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *sql, *params, *idle = NULL, *result;
    CursorBaseObject *cursor;
    int truth;

    if (sql_and_parameters("execute", args, nargs, kwnames, &sql, &params) < 0)
        return NULL;
    if (cursor_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ConnectionBase: cursor_setup() was not called");
        return NULL;
    }
    truth = conn_closed(conn);
    if (truth < 0)
        return NULL;
    if (truth) {
        result = call_method(conn, s_check, NULL, NULL, NULL, NULL);
        if (result == NULL)
            return NULL;
        Py_DECREF(result);
    }
    cursor = cursor_alloc((PyTypeObject *)cursor_class);
    if (cursor == NULL)
        return NULL;
    Py_INCREF(conn);
    cursor->connection = conn;
    /* an idle APSW cursor nothing else holds: the attribute and this reference (sys.getrefcount
     * counts its argument too, hence the - 1) */
    idle = CONN_GET(conn, idle, s_idle);
    if (idle == NULL)
        goto fail;
    if (idle == Py_None || Py_REFCNT(idle) != cursor_unshared - 1) {
        Py_SETREF(idle, CONN_GET(conn, idle_before, s_idle_before));
        if (idle == NULL)
            goto fail;
        if (idle == Py_None || Py_REFCNT(idle) != cursor_unshared - 1) {
            PyObject *db = CONN_GET(conn, db, s_db);
            Py_CLEAR(idle);
            if (db == NULL)
                goto fail;
            idle = call_method(db, s_cursor, NULL, NULL, NULL, NULL);
            Py_DECREF(db);
            if (idle == NULL)
                goto fail;
        }
    }
    cursor->cursor = idle; /* the reference moves */
    cursor->row_factory = CONN_GET(conn, row_factory, s_row_factory);
    if (cursor->row_factory == NULL)
        goto fail;
    result = cursor_execute_impl(cursor, sql, params);
    Py_DECREF(cursor);
    return result;
fail:
    Py_DECREF(cursor);
    return NULL;
}

static PyMethodDef connectionbase_methods[] = {
    {"execute", (PyCFunction)(void (*)(void))connectionbase_execute, METH_FASTCALL | METH_KEYWORDS,
     "Shortcut: a new cursor's execute."},
    {NULL, NULL, 0, NULL},
};

static int
connectionbase_traverse(PyObject *op, visitproc visit, void *arg)
{
    ConnectionBaseObject *self = (ConnectionBaseObject *)op;
    Py_VISIT(self->closed);
    Py_VISIT(self->statements);
    Py_VISIT(self->capture);
    Py_VISIT(self->isolation_level);
    Py_VISIT(self->db);
    Py_VISIT(self->idle);
    Py_VISIT(self->idle_before);
    Py_VISIT(self->row_factory);
    return 0;
}

static int
connectionbase_clear(PyObject *op)
{
    ConnectionBaseObject *self = (ConnectionBaseObject *)op;
    Py_CLEAR(self->closed);
    Py_CLEAR(self->statements);
    Py_CLEAR(self->capture);
    Py_CLEAR(self->isolation_level);
    Py_CLEAR(self->db);
    Py_CLEAR(self->idle);
    Py_CLEAR(self->idle_before);
    Py_CLEAR(self->row_factory);
    return 0;
}

static void
connectionbase_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    connectionbase_clear(op);
    Py_TYPE(op)->tp_free(op);
}

/* unset until Connection.__init__ sets them (AttributeError, as for plain attributes) */
static PyMemberDef connectionbase_members[] = {
    {"_closed", T_OBJECT_EX, offsetof(ConnectionBaseObject, closed), 0, NULL},
    {"_statements", T_OBJECT_EX, offsetof(ConnectionBaseObject, statements), 0, NULL},
    {"_capture", T_OBJECT_EX, offsetof(ConnectionBaseObject, capture), 0, NULL},
    {"isolation_level", T_OBJECT_EX, offsetof(ConnectionBaseObject, isolation_level), 0, NULL},
    {"_db", T_OBJECT_EX, offsetof(ConnectionBaseObject, db), 0, NULL},
    {"_idle", T_OBJECT_EX, offsetof(ConnectionBaseObject, idle), 0, NULL},
    {"_idle_before", T_OBJECT_EX, offsetof(ConnectionBaseObject, idle_before), 0, NULL},
    {"row_factory", T_OBJECT_EX, offsetof(ConnectionBaseObject, row_factory), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ConnectionBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turso_sync._speedups.ConnectionBase",
    .tp_basicsize = sizeof(ConnectionBaseObject),
    .tp_dealloc = connectionbase_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The compiled base of the DB-API Connection: the fields each statement reads, and execute.",
    .tp_traverse = connectionbase_traverse,
    .tp_clear = connectionbase_clear,
    .tp_methods = connectionbase_methods,
    .tp_members = connectionbase_members,
    .tp_new = PyType_GenericNew,
};

static PyObject *
cursor_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t unshared, offsets[STATEMENT_FLAGS];
    int i;
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "cursor_setup(cursor_class, unread, unshared, run_errors, fetch_errors, "
                                         "statement_class) takes 6 arguments");
        return NULL;
    }
    if (!PyType_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "cursor_setup(): statement_class must be a class");
        return NULL;
    }
    for (i = 0; i < STATEMENT_FLAGS; i++) {
        PyObject *descr = PyObject_GetAttr(args[5], *statement_names[i]);
        int usable;
        if (descr == NULL)
            return NULL;
        usable = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX &&
                 ((PyMemberDescrObject *)descr)->d_common.d_type == (PyTypeObject *)args[5];
        if (usable)
            offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        Py_DECREF(descr);
        if (!usable) {
            PyErr_Format(PyExc_TypeError, "cursor_setup(): %.50s.%U is not a slot", ((PyTypeObject *)args[5])->tp_name,
                         *statement_names[i]);
            return NULL;
        }
    }
    if (!PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &CursorBaseType)) {
        PyErr_SetString(PyExc_TypeError, "cursor_setup(): cursor_class must be a subclass of CursorBase");
        return NULL;
    }
    unshared = PyLong_AsSsize_t(args[2]);
    if (unshared == -1 && PyErr_Occurred())
        return NULL;
    Py_INCREF(args[0]);
    Py_XSETREF(cursor_class, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(cursor_unread, args[1]);
    cursor_unshared = unshared;
    Py_INCREF(args[3]);
    Py_XSETREF(cursor_run_errors, args[3]);
    Py_INCREF(args[4]);
    Py_XSETREF(cursor_fetch_errors, args[4]);
    Py_INCREF(args[5]);
    Py_XSETREF(statement_type, (PyTypeObject *)args[5]);
    memcpy(statement_offsets, offsets, sizeof(offsets));
    Py_RETURN_NONE;
}

static int
cursor_exec(PyObject *module)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&s_closed, "_closed"},
        {&s_statements, "_statements"},
        {&s_statement, "_statement"},
        {&s_capture, "_capture"},
        {&s_is_read, "is_read"},
        {&s_execute_captured, "_execute_captured"},
        {&s_writes_rows, "writes_rows"},
        {&s_isolation_level, "isolation_level"},
        {&s_db, "_db"},
        {&s_get_autocommit, "get_autocommit"},
        {&s_begin_if_needed, "_begin_if_needed"},
        {&s_several, "several"},
        {&s_returns_rows, "returns_rows"},
        {&s_prepared, "prepared"},
        {&s_run, "_run"},
        {&s_execute, "execute"},
        {&s_failed, "_failed"},
        {&s_idle, "_idle"},
        {&s_idle_before, "_idle_before"},
        {&s_changes, "changes"},
        {&s_last_insert_rowid, "last_insert_rowid"},
        {&s_check, "_check"},
        {&s_translate, "_translate"},
        {&s_cursor, "cursor"},
        {&s_row_factory, "row_factory"},
        {&s_sql, "sql"},
        {&s_parameters, "parameters"},
        {&s_convert, "_convert"},
        {&s_idle_now_method, "_idle_now"},
        {&s_connection, "connection"},
    };
    size_t i;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    }
    if (cursor_minus_one == NULL && (cursor_minus_one = PyLong_FromLong(-1)) == NULL)
        return -1;
    if (cursor_empty_tuple == NULL && (cursor_empty_tuple = PyTuple_New(0)) == NULL)
        return -1;
    if (PyType_Ready(&CursorBaseType) < 0 || PyType_Ready(&ConnectionBaseType) < 0 ||
        PyType_Ready(&CursorIterType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "CursorBase", (PyObject *)&CursorBaseType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "ConnectionBase", (PyObject *)&ConnectionBaseType);
}

/* ---- end of cursor (session 10) ---------------------------------------------------------------- */

/* ==== install (session 11): the frames of one installed WAL transaction ====
 *
 * install_frames(pgnos, bodies, plains, db_size, salts, cksum, big_endian, plain_chain, handed_type)
 *     -> (frames, cksum, plain_chain, handed)
 *     The per-frame loop of local/install.py's append_transaction (its twin is _install_frames_py
 *     there).  Frame n is page pgnos[n] with body bodies[n] (as stored: ciphertext in an encrypted
 *     WAL), the last one the commit frame (db_size in its header).  `frames` is each frame as
 *     written, a new bytes object of the 24-byte header and the body; `cksum` the WAL checksum chain
 *     over header bytes 0-7 and the body of each frame, continued from the `cksum` given (as
 *     SQLite and the walformat scanner check it).  When `plain_chain` is not None, the same chain
 *     over the plaintext images plains[n] is continued from it too, and `handed` is a list of
 *     `handed_type` objects (local/vfs.py's HandedFrame, made without its __init__ but with the
 *     same attributes it sets: disk, salts, prev_ct, prev_pt, ct, pt, given); else `plain_chain`
 *     and `handed` are None.  Bodies are any buffers of one length, a multiple of 8.
 */
static PyObject *install_names[7];
static const char *const install_name_text[7] = {"disk", "salts", "prev_ct", "prev_pt", "ct", "pt", "given"};
enum { I_DISK, I_SALTS, I_PREV_CT, I_PREV_PT, I_CT, I_PT, I_GIVEN };

static void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* a 32-bit unsigned value of an int, or -1 with ValueError naming `what` */
static int
as_u32(PyObject *v, const char *what, uint32_t *out)
{
    unsigned long long x;
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "install_frames(): %s must be int, not %.50s", what, Py_TYPE(v)->tp_name);
        return -1;
    }
    x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        x = (unsigned long long)1 << 32;
    }
    if (x > 0xFFFFFFFFull) {
        PyErr_Format(PyExc_ValueError, "install_frames(): %s must be a 32-bit unsigned int", what);
        return -1;
    }
    *out = (uint32_t)x;
    return 0;
}

/* a pair of 32-bit ints from a 2-tuple */
static int
as_pair(PyObject *t, const char *what, uint32_t *a, uint32_t *b)
{
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2) {
        PyErr_Format(PyExc_TypeError, "install_frames(): %s must be a pair of ints", what);
        return -1;
    }
    return as_u32(PyTuple_GET_ITEM(t, 0), what, a) < 0 ? -1 : as_u32(PyTuple_GET_ITEM(t, 1), what, b);
}

static PyObject *
pair_of(uint32_t a, uint32_t b)
{
    return steal_tuple(2, PyLong_FromUnsignedLong(a), PyLong_FromUnsignedLong(b), NULL);
}

/* A HandedFrame made as its __init__ would make it; NULL with an exception set. */
static PyObject *
install_handed(PyTypeObject *type, PyObject *disk, PyObject *salts, const Py_buffer *plain, PyObject *prev_ct,
               PyObject *prev_pt, PyObject *ct, PyObject *pt, uint32_t p1, uint32_t p2)
{
    PyObject *values[7], *obj, *empty;
    unsigned char *g;
    int i, failed = 0;

    values[I_GIVEN] = PyBytes_FromStringAndSize(NULL, 24 + plain->len);
    if (values[I_GIVEN] == NULL)
        return NULL;
    g = (unsigned char *)PyBytes_AS_STRING(values[I_GIVEN]);
    memcpy(g, PyBytes_AS_STRING(disk), 16);
    put_be32(g + 16, p1);
    put_be32(g + 20, p2);
    memcpy(g + 24, plain->buf, (size_t)plain->len);
    empty = PyTuple_New(0);
    obj = empty == NULL ? NULL : type->tp_new(type, empty, NULL);
    Py_XDECREF(empty);
    if (obj == NULL) {
        Py_DECREF(values[I_GIVEN]);
        return NULL;
    }
    values[I_DISK] = disk;
    values[I_SALTS] = salts;
    values[I_PREV_CT] = prev_ct;
    values[I_PREV_PT] = prev_pt;
    values[I_CT] = ct;
    values[I_PT] = pt;
    for (i = 0; i < 7 && !failed; i++)
        failed = PyObject_SetAttr(obj, install_names[i], values[i]) < 0;
    Py_DECREF(values[I_GIVEN]);
    if (failed) {
        Py_DECREF(obj);
        return NULL;
    }
    return obj;
}

/* Frame f's header (page, commit size, salts) and stored checksum: the chain (c1, c2) continued over
 * the header's first 8 bytes and the body_len bytes of body already at f + 24. */
static void
install_frame_header(unsigned char *f, uint32_t pgno, uint32_t commit, uint32_t salt1, uint32_t salt2,
                     Py_ssize_t body_len, int swap, uint32_t *c1, uint32_t *c2)
{
    put_be32(f, pgno);
    put_be32(f + 4, commit);
    put_be32(f + 8, salt1);
    put_be32(f + 12, salt2);
    checksum_pairs(f, 1, swap, c1, c2);
    checksum_pairs(f + 24, body_len / 8, swap, c1, c2);
    put_be32(f + 16, *c1);
    put_be32(f + 20, *c2);
}

/* The plaintext chain (p1, p2) continued over frame's first 8 bytes and plain, and the frame as handed
 * over to WAL recovery (install_handed); *pt is set to the new chain's pair (a new reference, the
 * caller's to release, on failure too).  NULL with an exception set. */
static PyObject *
install_hand_over(PyTypeObject *type, PyObject *frame, PyObject *salts, const Py_buffer *plain, int swap,
                  PyObject *prev_ct, PyObject *prev_pt, PyObject *ct, uint32_t *p1, uint32_t *p2, PyObject **pt)
{
    checksum_pairs((const unsigned char *)PyBytes_AS_STRING(frame), 1, swap, p1, p2);
    checksum_pairs(plain->buf, plain->len / 8, swap, p1, p2);
    *pt = pair_of(*p1, *p2);
    if (*pt == NULL)
        return NULL;
    return install_handed(type, frame, salts, plain, prev_ct, prev_pt, ct, *pt, *p1, *p2);
}

static PyObject *
install_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *pgnos, *bodies, *plains, *salts, *handed_type, *frames = NULL, *handed = NULL, *result = NULL;
    PyObject *prev_ct = NULL, *prev_pt = NULL, *ct = NULL, *pt = NULL, *frame, *obj;
    uint32_t db_size, salt1, salt2, c1, c2, p1 = 0, p2 = 0, pgno;
    Py_ssize_t n, count, body_len = -1;
    int big, swap, chained, i;
    Py_buffer body, plain;
    unsigned char *f;
    (void)module;

    for (i = 0; i < 7; i++)
        if (install_names[i] == NULL && (install_names[i] = PyUnicode_InternFromString(install_name_text[i])) == NULL)
            return NULL;
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "install_frames() takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    pgnos = args[0];
    bodies = args[1];
    plains = args[2];
    salts = args[4];
    handed_type = args[8];
    chained = args[7] != Py_None;
    if (!PyList_Check(pgnos) || !PyList_Check(bodies) || !PyList_Check(plains)) {
        PyErr_SetString(PyExc_TypeError, "install_frames(): pgnos, bodies and plains must be lists");
        return NULL;
    }
    count = PyList_GET_SIZE(pgnos);
    if (count == 0 || PyList_GET_SIZE(bodies) != count || (chained && PyList_GET_SIZE(plains) != count)) {
        PyErr_SetString(PyExc_ValueError, "install_frames(): one body (and plaintext) per page, at least one page");
        return NULL;
    }
    if (chained && !PyType_Check(handed_type)) {
        PyErr_SetString(PyExc_TypeError, "install_frames(): handed_type must be a class when plain_chain is given");
        return NULL;
    }
    if (as_u32(args[3], "db_size", &db_size) < 0 || as_pair(salts, "salts", &salt1, &salt2) < 0 ||
        as_pair(args[5], "cksum", &c1, &c2) < 0 || (chained && as_pair(args[7], "plain_chain", &p1, &p2) < 0))
        return NULL;
    big = PyObject_IsTrue(args[6]);
    if (big < 0)
        return NULL;
    swap = big != host_is_big_endian();
    frames = PyList_New(count);
    if (frames == NULL)
        return NULL;
    if (chained && (handed = PyList_New(count)) == NULL)
        goto done;
    prev_ct = pair_of(c1, c2);
    if (prev_ct == NULL || (chained && (prev_pt = pair_of(p1, p2)) == NULL))
        goto done;
    for (n = 0; n < count; n++) {
        if (as_u32(PyList_GET_ITEM(pgnos, n), "page number", &pgno) < 0)
            goto done;
        if (PyObject_GetBuffer(PyList_GET_ITEM(bodies, n), &body, PyBUF_SIMPLE) < 0)
            goto done;
        if ((body_len >= 0 && body.len != body_len) || body.len % 8 != 0 || body.len == 0) {
            PyErr_Format(PyExc_ValueError, "install_frames(): body %zd is %zd bytes (one length, a multiple of 8)", n,
                         body.len);
            PyBuffer_Release(&body);
            goto done;
        }
        body_len = body.len;
        frame = PyBytes_FromStringAndSize(NULL, 24 + body.len);
        if (frame == NULL) {
            PyBuffer_Release(&body);
            goto done;
        }
        PyList_SET_ITEM(frames, n, frame);
        f = (unsigned char *)PyBytes_AS_STRING(frame);
        memcpy(f + 24, body.buf, (size_t)body.len);
        PyBuffer_Release(&body);
        install_frame_header(f, pgno, n == count - 1 ? db_size : 0, salt1, salt2, body_len, swap, &c1, &c2);
        if ((ct = pair_of(c1, c2)) == NULL)
            goto done;
        if (chained) {
            if (PyObject_GetBuffer(PyList_GET_ITEM(plains, n), &plain, PyBUF_SIMPLE) < 0)
                goto done;
            if (plain.len % 8 != 0) {
                PyErr_Format(PyExc_ValueError, "install_frames(): plaintext %zd is %zd bytes, not a multiple of 8", n,
                             plain.len);
                PyBuffer_Release(&plain);
                goto done;
            }
            obj = install_hand_over((PyTypeObject *)handed_type, frame, salts, &plain, swap, prev_ct, prev_pt, ct, &p1,
                                    &p2, &pt);
            PyBuffer_Release(&plain);
            if (obj == NULL)
                goto done;
            PyList_SET_ITEM(handed, n, obj);
            Py_SETREF(prev_pt, pt);
            pt = NULL;
        }
        Py_SETREF(prev_ct, ct);
        ct = NULL;
    }
    result = PyTuple_Pack(4, frames, prev_ct, chained ? prev_pt : Py_None, chained ? handed : Py_None);
done:
    Py_XDECREF(frames);
    Py_XDECREF(handed);
    Py_XDECREF(prev_ct);
    Py_XDECREF(prev_pt);
    Py_XDECREF(ct);
    Py_XDECREF(pt);
    return result;
}

/* ==== end of install (session 11) ==== */

/* ==== walwrite (session 11): an encrypted WAL's frame writes in Turso's format, without a Python frame ====
 *
 * wal_frame_writer(file, base, pending, chain, page_size, plain, frame, encrypt, base_read, base_write) -> writer
 *     A callable writer(data, offset), set as an EncryptedWALFile's instance attribute xWrite (APSW
 *     looks the method up on the object, so it wins over the class's).  It takes the two writes of
 *     a new frame, as the class's xWrite, _write_body and _seal_header do them:
 *       - its 24-byte header (non-zero salts, not a checksum rewrite: that is a header written
 *         right after its frame was read whole, file._last_full_read == k, when k is at least
 *         file._recksum_from) is kept in `pending` (the file's _pending dict) under the frame number;
 *       - its body (page_size bytes right after a header kept there, not page 1, reserved tail
 *         zero, file._big known) is copied into `plain` (a bytearray of page_size - 28 bytes), a
 *         random nonce is put in the last 12 bytes of `frame` (a bytearray of 24 + page_size bytes:
 *         the frame as it goes to disk), `encrypt()` seals `plain` into frame[24:24 + page_size - 12]
 *         (ciphertext and tag), the checksum is SQLite's over the header's first 8 bytes and the
 *         ciphertext, continuing from the one stored on disk before the frame (read with
 *         base_read(file, 8, offset), never cached: see _seal_header), the header's first 16 bytes
 *         and that checksum go into frame[:24], base_write(file, frame, offset) writes it whole,
 *         chain[(salt1, salt2, k)] = ((ct1, ct2), (pt1, pt2)) records it (pt: the checksum SQLite
 *         wrote), and the header leaves `pending`.
 *     Both set file._prev_tail = file._ahead = None and file._last_full_read = 0 first, as xWrite
 *     does.  Every other write (the WAL header, a placeholder, a checksum rewrite, an in-place
 *     overwrite, page 1, anything odd) and any error on the way is base(file, data, offset), the
 *     class's method, with `pending` and `chain` as they were.  The file is held by a weak reference.
 */
#include <sys/random.h> /* getentropy (glibc also declares it in unistd.h) */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *file_ref;
    PyObject *base;       /* the class's xWrite(file, data, offset) */
    PyObject *pending;    /* dict: frame -> header */
    PyObject *chain;      /* dict: (salt1, salt2, frame) -> (ct, pt) */
    PyObject *frame;      /* bytearray(24 + page_size), exported below */
    PyObject *encrypt;    /* encrypt(): plain -> frame[24:...], the nonce taken from the frame's end */
    PyObject *base_read;  /* apsw.VFSFile.xRead */
    PyObject *base_write; /* apsw.VFSFile.xWrite */
    Py_buffer plain;      /* payload bytes of the page, exported for the writer's life */
    Py_buffer out;        /* the frame, exported for the writer's life */
    int has_plain, has_out;
    long long page_size;
} WalFrameWriterObject;

#define WW_HEADER 24
#define WW_NONCE 12
#define WW_RESERVED 28
#define WW_WAL_HEADER 32

static PyObject *ww_names[5];
static const char *const ww_name_text[5] = {"_prev_tail", "_ahead", "_last_full_read", "_recksum_from", "_big"};
enum { W_PREV_TAIL, W_AHEAD, W_LAST_FULL_READ, W_RECKSUM_FROM, W_BIG };
static PyObject *ww_zero, *ww_eight;

/* The file's attributes are plain instance attributes (EncryptedWALFile sets each in __init__):
 * read and set in its __dict__, as getattr and setattr would find and set them.  A name missing
 * there (NULL, no error set) sends the write to the class's method. */
static PyObject *
ww_get(PyObject *dict, int name)
{
    return PyDict_GetItemWithError(dict, ww_names[name]); /* borrowed */
}

/* set `name` to `value` unless it is that object already */
static int
ww_set(PyObject *dict, int name, PyObject *value)
{
    PyObject *now = ww_get(dict, name);
    if (now == value)
        return 0;
    return now == NULL && PyErr_Occurred() ? -1 : PyDict_SetItem(dict, ww_names[name], value);
}

/* what xWrite does first, whatever the write: no read-ahead or frame read whole before it stays valid */
static int
ww_forget_reads(PyObject *dict)
{
    if (ww_set(dict, W_PREV_TAIL, Py_None) < 0 || ww_set(dict, W_AHEAD, Py_None) < 0)
        return -1;
    return ww_set(dict, W_LAST_FULL_READ, ww_zero);
}

/* (a, b) of two unsigned 32-bit ints, a new reference or NULL */
static PyObject *
ww_pair(uint32_t a, uint32_t b)
{
    return steal_tuple(2, PyLong_FromUnsignedLong(a), PyLong_FromUnsignedLong(b), NULL);
}

static void
ww_put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* 1: a new frame's header kept; 0: not one for this path (nothing changed); -1: an error. */
static int
ww_header(WalFrameWriterObject *writer, PyObject *dict, PyObject *data, const unsigned char *buf, long long index)
{
    static const unsigned char zeros[8] = {0};
    PyObject *recksum, *key, *header;
    int rc;

    if (memcmp(buf + 8, zeros, 8) == 0 && memcmp(buf + 16, zeros, 8) == 0)
        return 0; /* a placeholder: written as it is */
    recksum = ww_get(dict, W_RECKSUM_FROM);
    if (recksum == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (recksum != Py_None) {
        /* SQLite's checksum rewrite reads the frame whole, then writes its header back: the
         * class's method seals that one; a new frame's header after an overwrite is kept here */
        PyObject *last = ww_get(dict, W_LAST_FULL_READ);
        long long from, last_read;
        if (last == NULL || !PyLong_CheckExact(last) || !PyLong_CheckExact(recksum))
            return PyErr_Occurred() ? -1 : 0;
        from = PyLong_AsLongLong(recksum);
        last_read = PyLong_AsLongLong(last);
        if (PyErr_Occurred())
            return -1;
        if (last_read == index && index >= from)
            return 0;
    }
    if (ww_forget_reads(dict) < 0)
        return -1;
    header = PyBytes_CheckExact(data) ? Py_NewRef(data) : PyBytes_FromStringAndSize((const char *)buf, WW_HEADER);
    key = header == NULL ? NULL : PyLong_FromLongLong(index);
    rc = key == NULL ? -1 : PyDict_SetItem(writer->pending, key, header);
    Py_XDECREF(key);
    Py_XDECREF(header);
    return rc < 0 ? -1 : 1;
}

/* 1: the frame written; 0: not one for this path (nothing changed); -1: an error (the caller falls back). */
static int
ww_body(WalFrameWriterObject *writer, PyObject *file, PyObject *dict, const unsigned char *plain, long long index,
        long long offset)
{
    long long P = writer->page_size, frame_start = offset - WW_HEADER;
    PyObject *key = NULL, *header, *big, *args[3], *prev = NULL, *res = NULL, *chain_key = NULL, *value = NULL;
    const unsigned char *head, *prev_bytes;
    unsigned char *out = writer->out.buf, prev8[8] = {0};
    uint32_t s1, s2, salt1, salt2;
    Py_ssize_t i, got;
    int swap, rc = -1;

    key = PyLong_FromLongLong(index);
    if (key == NULL)
        return -1;
    header = PyDict_GetItemWithError(writer->pending, key); /* borrowed */
    if (header == NULL || !PyBytes_CheckExact(header) || PyBytes_GET_SIZE(header) != WW_HEADER) {
        rc = PyErr_Occurred() ? -1 : 0; /* no header waiting: an in-place overwrite */
        goto finish;
    }
    head = (const unsigned char *)PyBytes_AS_STRING(header);
    if (be32(head) == 1) {
        rc = 0; /* page 1 keeps its header readable and authenticated: the class's method */
        goto finish;
    }
    for (i = P - WW_RESERVED; i < P; i++)
        if (plain[i] != 0) {
            rc = 0; /* the class's method refuses it, naming the page */
            goto finish;
        }
    big = ww_get(dict, W_BIG);
    if (big != Py_True && big != Py_False) {
        rc = PyErr_Occurred() ? -1 : 0; /* not known yet: the byte order is read from the WAL header there */
        goto finish;
    }
    swap = (big == Py_True) != host_is_big_endian();
    if (ww_forget_reads(dict) < 0)
        goto finish;
    /* the checksum stored before this frame, from disk (index 1: the WAL header's, at byte 24) */
    args[0] = file;
    args[1] = ww_eight;
    args[2] = PyLong_FromLongLong(index == 1 ? 24 : frame_start - P - WW_HEADER + 16);
    if (args[2] == NULL)
        goto finish;
    prev = PyObject_Vectorcall(writer->base_read, args, 3, NULL);
    Py_DECREF(args[2]);
    if (prev == NULL || !PyBytes_Check(prev))
        goto finish;
    got = PyBytes_GET_SIZE(prev) < 8 ? PyBytes_GET_SIZE(prev) : 8;
    prev_bytes = (const unsigned char *)PyBytes_AS_STRING(prev);
    memcpy(prev8, prev_bytes, (size_t)got); /* a short read is zero-filled, as _disk_ct does */
    /* encrypt: the payload into `plain`, a fresh nonce at the frame's end, then OpenSSL's seal */
    memcpy(writer->plain.buf, plain, (size_t)writer->plain.len);
    if (getentropy(out + WW_HEADER + P - WW_NONCE, WW_NONCE) != 0) { /* the kernel's generator, as os.urandom */
        PyErr_SetFromErrno(PyExc_OSError);
        goto finish;
    }
    res = PyObject_CallNoArgs(writer->encrypt);
    if (res == NULL)
        goto finish;
    s1 = be32(prev8);
    s2 = be32(prev8 + 4);
    checksum_pairs(head, 1, swap, &s1, &s2);
    checksum_pairs(out + WW_HEADER, (Py_ssize_t)(P / 8), swap, &s1, &s2);
    memcpy(out, head, 16); /* page number, size after commit and salts as SQLite wrote them */
    ww_put_be32(out + 16, s1);
    ww_put_be32(out + 20, s2);
    args[1] = writer->frame;
    args[2] = PyLong_FromLongLong(frame_start);
    if (args[2] == NULL)
        goto finish;
    Py_DECREF(res);
    res = PyObject_Vectorcall(writer->base_write, args, 3, NULL);
    Py_DECREF(args[2]);
    if (res == NULL)
        goto finish;
    salt1 = be32(head + 8);
    salt2 = be32(head + 12);
    chain_key = steal_tuple(3, PyLong_FromUnsignedLong(salt1), PyLong_FromUnsignedLong(salt2), Py_NewRef(key));
    value = chain_key == NULL ? NULL : steal_tuple(2, ww_pair(s1, s2), ww_pair(be32(head + 16), be32(head + 20)), NULL);
    if (value == NULL || PyDict_SetItem(writer->chain, chain_key, value) < 0 || PyDict_DelItem(writer->pending, key) < 0)
        goto finish;
    rc = 1;
finish:
    Py_XDECREF(key);
    Py_XDECREF(prev);
    Py_XDECREF(res);
    Py_XDECREF(chain_key);
    Py_XDECREF(value);
    return rc;
}

static PyObject *
wal_frame_writer_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WalFrameWriterObject *writer = (WalFrameWriterObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *file;
    Py_buffer data;
    long long offset = -1, index = 0, within = -1, frame_size = writer->page_size + WW_HEADER;
    int rc = 0;

    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "WAL xWrite writer takes exactly 2 positional arguments (data, offset)");
        return NULL;
    }
    file = file_of(writer->file_ref, "WAL xWrite writer");
    if (file == NULL)
        return NULL;
    if (PyLong_CheckExact(args[1])) {
        offset = PyLong_AsLongLong(args[1]);
        if (offset == -1 && PyErr_Occurred())
            PyErr_Clear();
    }
    if (offset >= WW_WAL_HEADER) {
        index = (offset - WW_WAL_HEADER) / frame_size + 1;
        within = (offset - WW_WAL_HEADER) % frame_size;
    }
    if ((within == 0 || within == WW_HEADER) && PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) == 0) {
        PyObject *dict = PyObject_GenericGetDict(file, NULL);
        if (dict == NULL || !PyDict_CheckExact(dict))
            rc = -1; /* (no error set when it is not a dict: the class's method then) */
        else if (within == 0 && data.len == WW_HEADER)
            rc = ww_header(writer, dict, args[0], data.buf, index);
        else if (within == WW_HEADER && data.len == writer->page_size)
            rc = ww_body(writer, file, dict, data.buf, index, offset);
        Py_XDECREF(dict);
        PyBuffer_Release(&data);
        if (rc == 1) {
            Py_DECREF(file);
            Py_RETURN_NONE;
        }
        if (rc < 0 && PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(file);
            return NULL;
        }
    }
    PyErr_Clear(); /* not for this path, or an error on it: the class's method decides, and raises what it raises */
    return call_with_file(writer->base, file, args);
}

static void
wal_frame_writer_dealloc(PyObject *self)
{
    WalFrameWriterObject *writer = (WalFrameWriterObject *)self;
    if (writer->has_plain)
        PyBuffer_Release(&writer->plain);
    if (writer->has_out)
        PyBuffer_Release(&writer->out);
    Py_XDECREF(writer->file_ref);
    Py_XDECREF(writer->base);
    Py_XDECREF(writer->pending);
    Py_XDECREF(writer->chain);
    Py_XDECREF(writer->frame);
    Py_XDECREF(writer->encrypt);
    Py_XDECREF(writer->base_read);
    Py_XDECREF(writer->base_write);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject WalFrameWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turso_sync._speedups.WalFrameWriter",
    .tp_basicsize = sizeof(WalFrameWriterObject),
    .tp_dealloc = wal_frame_writer_dealloc,
    .tp_vectorcall_offset = offsetof(WalFrameWriterObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "writer(data, offset): a new frame's header and body, encrypted, checksummed and written here; "
              "base(file, data, offset) otherwise.",
};

static PyObject *
wal_frame_writer(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    WalFrameWriterObject *writer;
    long long page_size;
    int i;
    (void)module;

    if (!(WalFrameWriterType.tp_flags & Py_TPFLAGS_READY) && PyType_Ready(&WalFrameWriterType) < 0)
        return NULL;
    for (i = 0; i < 5; i++)
        if (ww_names[i] == NULL && (ww_names[i] = PyUnicode_InternFromString(ww_name_text[i])) == NULL)
            return NULL;
    if (ww_zero == NULL && (ww_zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    if (ww_eight == NULL && (ww_eight = PyLong_FromLong(8)) == NULL)
        return NULL;
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "wal_frame_writer() takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyCallable_Check(args[1]) || !PyCallable_Check(args[7]) || !PyCallable_Check(args[8]) ||
        !PyCallable_Check(args[9])) {
        PyErr_SetString(PyExc_TypeError, "wal_frame_writer(): base, encrypt, base_read and base_write must be callable");
        return NULL;
    }
    if (!PyDict_CheckExact(args[2]) || !PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "wal_frame_writer(): pending and chain must be dicts");
        return NULL;
    }
    page_size = PyLong_AsLongLong(args[4]);
    if (page_size == -1 && PyErr_Occurred())
        return NULL;
    if (page_size < 512 || page_size % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "wal_frame_writer(): page_size must be a multiple of 8 of at least 512");
        return NULL;
    }
    if (!PyByteArray_CheckExact(args[5]) || PyByteArray_GET_SIZE(args[5]) != page_size - WW_RESERVED ||
        !PyByteArray_CheckExact(args[6]) || PyByteArray_GET_SIZE(args[6]) != page_size + WW_HEADER) {
        PyErr_SetString(PyExc_ValueError,
                        "wal_frame_writer(): plain and frame must be bytearrays of page_size - 28 and 24 + page_size bytes");
        return NULL;
    }
    writer = PyObject_New(WalFrameWriterObject, &WalFrameWriterType);
    if (writer == NULL)
        return NULL;
    writer->vectorcall = wal_frame_writer_vectorcall;
    writer->file_ref = writer->base = writer->pending = writer->chain = NULL;
    writer->frame = writer->encrypt = writer->base_read = writer->base_write = NULL;
    writer->has_plain = writer->has_out = 0;
    writer->page_size = page_size;
    if (PyObject_GetBuffer(args[5], &writer->plain, PyBUF_WRITABLE) < 0)
        goto fail;
    writer->has_plain = 1;
    if (PyObject_GetBuffer(args[6], &writer->out, PyBUF_WRITABLE) < 0)
        goto fail;
    writer->has_out = 1;
    writer->file_ref = PyWeakref_NewRef(args[0], NULL);
    if (writer->file_ref == NULL)
        goto fail;
    writer->base = Py_NewRef(args[1]);
    writer->pending = Py_NewRef(args[2]);
    writer->chain = Py_NewRef(args[3]);
    writer->frame = Py_NewRef(args[6]);
    writer->encrypt = Py_NewRef(args[7]);
    writer->base_read = Py_NewRef(args[8]);
    writer->base_write = Py_NewRef(args[9]);
    return (PyObject *)writer;
fail:
    Py_DECREF(writer);
    return NULL;
}

/* ==== end of walwrite ==== */

/* ==== encinst (session 12): pages sealed in Turso's format, without a Python frame per page ====
 *
 * seal_pages(pages, nonces, aead, magic, page_size) -> list of bytes
 *     What crypto/page_codec.py's PageCodec.encrypt_pages does in Turso's format (its twin is
 *     _seal_pages_py there): pages is a sequence of (page number, plaintext) pairs, each plaintext a
 *     buffer of page_size bytes; nonces the 12-byte nonce of each page one after the other (one
 *     os.urandom call for all); aead the codec's AESGCM.  Page n comes back as a new bytes object of
 *     page_size bytes, [ciphertext | tag (16) | nonce (12)]: aead.encrypt_into seals the plaintext's
 *     first page_size - 28 bytes under nonces[12n:12n + 12] straight into it (no zero-filled output,
 *     no slice of the plaintext, no concatenation with the nonce).  Page 1 keeps its header readable:
 *     its first 100 bytes are `magic` (16 bytes) and plaintext bytes 16-100, which are the associated
 *     data of the sealed bytes 100 to page_size - 28.  The reserved tail of each plaintext is not
 *     looked at (the caller checked it).
 */
static PyObject *seal_encrypt_into_name;

/* a read-only (or writable) view of `len` bytes at `p`, for the length of one call */
static PyObject *
seal_view(const unsigned char *p, Py_ssize_t len, int writable)
{
    return PyMemoryView_FromMemory((char *)p, len, writable ? PyBUF_WRITE : PyBUF_READ);
}

/* seal one page into `out` (page_size bytes); 0, or -1 with an exception set */
static int
seal_one(PyObject *encrypt_into, PyObject *magic, const unsigned char *plain, unsigned char *out, Py_ssize_t P,
         uint32_t pgno, const unsigned char *nonce)
{
    PyObject *args[4] = {NULL, NULL, NULL, NULL}, *res = NULL;
    Py_ssize_t at = pgno == 1 ? 100 : 0; /* page 1: the header before the sealed bytes */
    int i, rc = -1;

    memcpy(out + P - 12, nonce, 12);
    if (at) {
        memcpy(out, PyBytes_AS_STRING(magic), 16);
        memcpy(out + 16, plain + 16, 100 - 16);
    }
    args[0] = seal_view(out + P - 12, 12, 0);
    args[1] = seal_view(plain + at, P - 28 - at, 0);
    args[2] = at ? seal_view(out, at, 0) : Py_NewRef(Py_None);
    args[3] = seal_view(out + at, P - 12 - at, 1);
    if (args[0] == NULL || args[1] == NULL || args[2] == NULL || args[3] == NULL)
        goto done;
    res = PyObject_Vectorcall(encrypt_into, args, 4, NULL);
    if (res == NULL)
        goto done;
    /* the views point into a bytes object about to be handed out: none may outlive this call */
    for (i = 0; i < 4; i++)
        if (args[i] != Py_None && Py_REFCNT(args[i]) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "seal_pages(): encrypt_into kept a view of the page");
            goto done;
        }
    rc = 0;
done:
    Py_XDECREF(res);
    for (i = 0; i < 4; i++)
        Py_XDECREF(args[i]);
    return rc;
}

static PyObject *
seal_pages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *seq = NULL, *encrypt_into = NULL, *out = NULL, *item, *body, *magic;
    Py_ssize_t n, count, P;
    Py_buffer nonces, plain;
    uint32_t pgno;
    (void)module;

    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "seal_pages() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    if (seal_encrypt_into_name == NULL && (seal_encrypt_into_name = PyUnicode_InternFromString("encrypt_into")) == NULL)
        return NULL;
    magic = args[3];
    if (!PyBytes_CheckExact(magic) || PyBytes_GET_SIZE(magic) != 16) {
        PyErr_SetString(PyExc_ValueError, "seal_pages(): magic must be 16 bytes");
        return NULL;
    }
    P = PyLong_AsSsize_t(args[4]);
    if (P == -1 && PyErr_Occurred())
        return NULL;
    if (P < 512) {
        PyErr_SetString(PyExc_ValueError, "seal_pages(): page_size must be at least 512");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &nonces, PyBUF_SIMPLE) < 0)
        return NULL;
    seq = PySequence_Fast(args[0], "seal_pages(): pages must be a sequence of (page number, plaintext) pairs");
    if (seq == NULL)
        goto done;
    count = PySequence_Fast_GET_SIZE(seq);
    if (nonces.len != 12 * count) {
        PyErr_Format(PyExc_ValueError, "seal_pages(): %zd nonce bytes for %zd pages (12 each)", nonces.len, count);
        goto done;
    }
    encrypt_into = PyObject_GetAttr(args[2], seal_encrypt_into_name);
    if (encrypt_into == NULL || (out = PyList_New(count)) == NULL)
        goto done;
    for (n = 0; n < count; n++) {
        item = PySequence_Fast_GET_ITEM(seq, n);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "seal_pages(): pages must be a sequence of (page number, plaintext) pairs");
            goto fail;
        }
        if (as_u32(PyTuple_GET_ITEM(item, 0), "page number", &pgno) < 0)
            goto fail;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 1), &plain, PyBUF_SIMPLE) < 0)
            goto fail;
        if (plain.len != P) {
            PyErr_Format(PyExc_ValueError, "seal_pages(): page %u is %zd bytes, expected %zd", pgno, plain.len, P);
            PyBuffer_Release(&plain);
            goto fail;
        }
        body = PyBytes_FromStringAndSize(NULL, P);
        if (body == NULL) {
            PyBuffer_Release(&plain);
            goto fail;
        }
        PyList_SET_ITEM(out, n, body);
        if (seal_one(encrypt_into, magic, plain.buf, (unsigned char *)PyBytes_AS_STRING(body), P, pgno,
                     (const unsigned char *)nonces.buf + 12 * n) < 0) {
            PyBuffer_Release(&plain);
            goto fail;
        }
        PyBuffer_Release(&plain);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_XDECREF(encrypt_into);
    Py_XDECREF(seq);
    PyBuffer_Release(&nonces);
    return out;
}

/*
 * install_sealed_frames(pgnos, plains, nonces, aead, magic, db_size, salts, cksum, big_endian, plain_chain,
 *                       handed_type) -> (frames, bodies, cksum, plain_chain, handed)
 *     seal_pages and install_frames (the install section) in one pass, for an install into an
 *     encrypted WAL in Turso's format (local/install.py; its twin is _install_sealed_frames_py there):
 *     page n (plaintext plains[n], page_size bytes, a multiple of 8) is sealed under nonces[12n:12n + 12]
 *     straight into frame n's body, whose header and checksums are then made from it as install_frames
 *     makes them from bodies[n], while its bytes are still in the cache.  `bodies` is each sealed page
 *     as its own bytes object (seal_pages' result); the rest is install_frames' result.
 */
static PyObject *
install_sealed_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *pgnos, *plains, *magic, *salts, *handed_type, *encrypt_into = NULL, *frames = NULL, *bodies = NULL;
    PyObject *handed = NULL, *result = NULL, *prev_ct = NULL, *prev_pt = NULL, *ct = NULL, *pt = NULL, *frame, *obj;
    uint32_t db_size, salt1, salt2, c1, c2, p1 = 0, p2 = 0, pgno;
    Py_ssize_t n, count, P = -1;
    int big, swap, chained, i;
    Py_buffer nonces, plain;
    unsigned char *f;
    (void)module;

    for (i = 0; i < 7; i++)
        if (install_names[i] == NULL && (install_names[i] = PyUnicode_InternFromString(install_name_text[i])) == NULL)
            return NULL;
    if (seal_encrypt_into_name == NULL && (seal_encrypt_into_name = PyUnicode_InternFromString("encrypt_into")) == NULL)
        return NULL;
    if (nargs != 11) {
        PyErr_Format(PyExc_TypeError, "install_sealed_frames() takes 11 arguments (%zd given)", nargs);
        return NULL;
    }
    pgnos = args[0];
    plains = args[1];
    magic = args[4];
    salts = args[6];
    handed_type = args[10];
    chained = args[9] != Py_None;
    if (!PyList_Check(pgnos) || !PyList_Check(plains)) {
        PyErr_SetString(PyExc_TypeError, "install_sealed_frames(): pgnos and plains must be lists");
        return NULL;
    }
    count = PyList_GET_SIZE(pgnos);
    if (count == 0 || PyList_GET_SIZE(plains) != count) {
        PyErr_SetString(PyExc_ValueError, "install_sealed_frames(): one plaintext per page, at least one page");
        return NULL;
    }
    if (!PyBytes_CheckExact(magic) || PyBytes_GET_SIZE(magic) != 16) {
        PyErr_SetString(PyExc_ValueError, "install_sealed_frames(): magic must be 16 bytes");
        return NULL;
    }
    if (chained && !PyType_Check(handed_type)) {
        PyErr_SetString(PyExc_TypeError, "install_sealed_frames(): handed_type must be a class when plain_chain is given");
        return NULL;
    }
    if (as_u32(args[5], "db_size", &db_size) < 0 || as_pair(salts, "salts", &salt1, &salt2) < 0 ||
        as_pair(args[7], "cksum", &c1, &c2) < 0 || (chained && as_pair(args[9], "plain_chain", &p1, &p2) < 0))
        return NULL;
    big = PyObject_IsTrue(args[8]);
    if (big < 0)
        return NULL;
    swap = big != host_is_big_endian();
    if (PyObject_GetBuffer(args[2], &nonces, PyBUF_SIMPLE) < 0)
        return NULL;
    if (nonces.len != 12 * count) {
        PyErr_Format(PyExc_ValueError, "install_sealed_frames(): %zd nonce bytes for %zd pages (12 each)", nonces.len,
                     count);
        goto done;
    }
    encrypt_into = PyObject_GetAttr(args[3], seal_encrypt_into_name);
    if (encrypt_into == NULL || (frames = PyList_New(count)) == NULL || (bodies = PyList_New(count)) == NULL)
        goto done;
    if (chained && (handed = PyList_New(count)) == NULL)
        goto done;
    prev_ct = pair_of(c1, c2);
    if (prev_ct == NULL || (chained && (prev_pt = pair_of(p1, p2)) == NULL))
        goto done;
    for (n = 0; n < count; n++) {
        if (as_u32(PyList_GET_ITEM(pgnos, n), "page number", &pgno) < 0)
            goto done;
        if (PyObject_GetBuffer(PyList_GET_ITEM(plains, n), &plain, PyBUF_SIMPLE) < 0)
            goto done;
        if ((P >= 0 && plain.len != P) || plain.len % 8 != 0 || plain.len < 512) {
            PyErr_Format(PyExc_ValueError,
                         "install_sealed_frames(): plaintext %zd is %zd bytes (one length, a multiple of 8, at least 512)",
                         n, plain.len);
            goto release;
        }
        P = plain.len;
        frame = PyBytes_FromStringAndSize(NULL, 24 + P);
        if (frame == NULL)
            goto release;
        PyList_SET_ITEM(frames, n, frame);
        f = (unsigned char *)PyBytes_AS_STRING(frame);
        if (seal_one(encrypt_into, magic, plain.buf, f + 24, P, pgno, (const unsigned char *)nonces.buf + 12 * n) < 0)
            goto release;
        install_frame_header(f, pgno, n == count - 1 ? db_size : 0, salt1, salt2, P, swap, &c1, &c2);
        obj = PyBytes_FromStringAndSize((const char *)f + 24, P);
        if (obj == NULL)
            goto release;
        PyList_SET_ITEM(bodies, n, obj);
        if ((ct = pair_of(c1, c2)) == NULL)
            goto release;
        if (chained) {
            obj = install_hand_over((PyTypeObject *)handed_type, frame, salts, &plain, swap, prev_ct, prev_pt, ct, &p1,
                                    &p2, &pt);
            if (obj == NULL)
                goto release;
            PyList_SET_ITEM(handed, n, obj);
            Py_SETREF(prev_pt, pt);
            pt = NULL;
        }
        PyBuffer_Release(&plain);
        Py_SETREF(prev_ct, ct);
        ct = NULL;
    }
    result = PyTuple_Pack(5, frames, bodies, prev_ct, chained ? prev_pt : Py_None, chained ? handed : Py_None);
    goto done;
release:
    PyBuffer_Release(&plain);
done:
    PyBuffer_Release(&nonces);
    Py_XDECREF(encrypt_into);
    Py_XDECREF(frames);
    Py_XDECREF(bodies);
    Py_XDECREF(handed);
    Py_XDECREF(prev_ct);
    Py_XDECREF(prev_pt);
    Py_XDECREF(ct);
    Py_XDECREF(pt);
    return result;
}

/* ==== end of encinst (session 12) ==== */

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

    /* cursor (session 10) */
    {"cursor_setup", (PyCFunction)(void (*)(void))cursor_setup, METH_FASTCALL,
     "cursor_setup(cursor_class, unread, unshared, run_errors, fetch_errors, statement_class)\n\n"
     "What CursorBase and ConnectionBase need from connection.py (see the cursor section)."},

    /* install (session 11) */
    {"install_frames", (PyCFunction)(void (*)(void))install_frames, METH_FASTCALL,
     "install_frames(pgnos, bodies, plains, db_size, salts, cksum, big_endian, plain_chain, handed_type)\n"
     "-> (frames, cksum, plain_chain, handed)\n\n"
     "The frames of one installed WAL transaction, each as written, with the checksum chain continued\n"
     "over them (and over the plaintext, with the frames handed over, when plain_chain is given)."},

    /* walwrite (session 11) */
    {"wal_frame_writer", (PyCFunction)(void (*)(void))wal_frame_writer, METH_FASTCALL,
     "wal_frame_writer(file, base, pending, chain, page_size, plain, frame, encrypt, base_read, base_write) -> writer\n\n"
     "A callable writer(data, offset) for an encrypted WAL in Turso's format: a new frame's header is kept\n"
     "in pending, its body encrypted, checksummed over the ciphertext and written with the header in one\n"
     "write; anything else is base(file, data, offset)."},
    /* encinst (session 12) */
    {"seal_pages", (PyCFunction)(void (*)(void))seal_pages, METH_FASTCALL,
     "seal_pages(pages, nonces, aead, magic, page_size) -> list of bytes\n\n"
     "Each (page number, plaintext) of pages encrypted in Turso's format under its 12 bytes of nonces,\n"
     "straight into the new page through aead.encrypt_into (page 1 keeps its header readable)."},
    {"install_sealed_frames", (PyCFunction)(void (*)(void))install_sealed_frames, METH_FASTCALL,
     "install_sealed_frames(pgnos, plains, nonces, aead, magic, db_size, salts, cksum, big_endian, plain_chain,\n"
     "handed_type) -> (frames, bodies, cksum, plain_chain, handed)\n\n"
     "seal_pages and install_frames in one pass: each page sealed straight into its frame's body, whose\n"
     "header and checksum chains (and hand-over) are then made from it."},
    {NULL, NULL, 0, NULL},
};

static int
speedups_exec(PyObject *module)
{
    if (PyType_Ready(&RouterType) < 0)
        return -1;
    return cursor_exec(module); /* cursor (session 10) */
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
