/* A VFS in C in front of the Python one (issue 12: point reads on an encrypted database).
 *
 * Optional, like _speedups.c: setup.py builds it where a C compiler and the headers of SQLite and of
 * libgcrypt (GnuPG's crypto library) are found, and turso_sync runs without it (every file through
 * the Python VFS alone) where it is absent or TURSO_SYNC_PURE_PYTHON refuses it.
 *
 * What it is.  APSW calls a Python VFS's methods with the GIL taken and a Python method looked up,
 * about a microsecond a call: every page a read misses in SQLite's cache, and the lock, unlock and
 * size calls of every read transaction.  This module is also a SQLite loadable extension: loading it
 * (its entry point turso_sync_fastvfs_init, through any APSW connection) registers the VFS
 * "turso_sync_c", a shim whose files wrap the Python VFS's ("turso_sync") files.  Every call goes to
 * the Python file, except on a main database file that the Python side has claimed (claim(), below):
 *   - in Turso's format, a read of one whole, aligned page other than page 1 is pread from the
 *     database's descriptor
 *     and decrypted here (AES-GCM through libgcrypt, the key schedule kept per file) straight into
 *     SQLite's buffer, in place; a short read, a read error or a page that does not verify goes to the
 *     Python file's xRead instead, which reads it again and keeps every behaviour and error (the
 *     message, the record of damage, page 1's retry);
 *   - in plaintext, every read goes straight to the unix file (as the class's xRead does while
 *     the replica is not partial), when that file is found (below);
 *   - when the Python file's class leaves them to its unix base (claim's `direct`), the lock,
 *     unlock, reserved-lock, size, sector-size and device calls, the shared-memory calls and the
 *     file controls the Python file does not handle go straight to that unix file, as APSW's
 *     inherited methods would pass them on, without the GIL.
 *
 * PageKey(fd, key, page_size, handled) -> key
 *     What every claimed file of one database shares: the descriptor (owned by the caller, which
 *     calls disable() before closing it), the AES-GCM key (16 or 32 bytes, copied here and wiped
 *     when the object goes; None for a plaintext database, whose descriptor may be -1), the page
 *     size and the file controls the Python file handles (at most 8).  disable() makes every file that holds it send all calls to Python from then on (a
 *     partial replica's missing pages are fetched there).  `hits` and `fallbacks` count the page
 *     reads done here and the ones handed to Python.
 *
 * claim(file, key, direct) -> bool
 *     Called from a main database file's __init__ (inside the Python VFS's xOpen): the shim's
 *     xOpen that is running in this thread takes `key` for the file it is opening.  `direct` says
 *     the lock calls may skip Python; they do only when the unix file APSW keeps under `file` is
 *     found and is what the unix VFS makes (checked against a file it opened at load).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gcrypt.h>
#include <sqlite3ext.h>

#define SHIM_NAME "turso_sync_c"
#define UNDER_NAME "turso_sync"
#define ENTRY_POINT "turso_sync_fastvfs_init"
#define MAX_HANDLED 8
#define TAG_SIZE 16
#define NONCE_SIZE 12
#define RESERVED (TAG_SIZE + NONCE_SIZE)

static const sqlite3_api_routines *api; /* APSW's SQLite, from the extension's load */

static void
wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* ==== PageKey ==== */

typedef struct {
    PyObject_HEAD
    int fd;
    int page_size;
    int enabled; /* read without the GIL: a stale 1 only costs one read that Python redoes */
    int nhandled;
    int handled[MAX_HANDLED];
    int plain; /* a plaintext database (no key) */
    int algo;  /* GCRY_CIPHER_AES128 or GCRY_CIPHER_AES256 */
    unsigned char key[32];
    int key_len;
    unsigned long long hits, fallbacks;
} PageKeyObject;

static PyTypeObject PageKeyType;

static int
page_key_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "key", "page_size", "handled", NULL};
    PageKeyObject *k = (PageKeyObject *)self;
    Py_buffer key;
    PyObject *key_obj, *handled, *seq;
    int fd, page_size;
    Py_ssize_t n, i;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOiO", kwlist, &fd, &key_obj, &page_size, &handled))
        return -1;
    if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1))) {
        PyErr_SetString(PyExc_ValueError, "PageKey: the page size is a power of two from 512 to 65536");
        return -1;
    }
    if (key_obj == Py_None) {
        k->plain = 1; /* a plaintext database: reads go to the unix file, no descriptor needed */
    }
    else {
        if (PyObject_GetBuffer(key_obj, &key, PyBUF_SIMPLE) < 0)
            return -1;
        if (key.len != 16 && key.len != 32) {
            PyBuffer_Release(&key);
            PyErr_Format(PyExc_ValueError, "PageKey: an AES-GCM key is 16 or 32 bytes, not %zd", key.len);
            return -1;
        }
        if (fd < 0) {
            PyBuffer_Release(&key);
            PyErr_SetString(PyExc_ValueError, "PageKey: an encrypted database's key needs its descriptor");
            return -1;
        }
        k->key_len = (int)key.len;
        memcpy(k->key, key.buf, (size_t)key.len);
        PyBuffer_Release(&key);
        k->algo = k->key_len == 16 ? GCRY_CIPHER_AES128 : GCRY_CIPHER_AES256;
    }
    seq = PySequence_Tuple(handled);
    if (seq == NULL)
        return -1;
    n = PyTuple_GET_SIZE(seq);
    if (n > MAX_HANDLED) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "PageKey: at most %d handled file controls", MAX_HANDLED);
        return -1;
    }
    for (i = 0; i < n; i++) {
        long op = PyLong_AsLong(PyTuple_GET_ITEM(seq, i));
        if (op == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        k->handled[i] = (int)op;
    }
    Py_DECREF(seq);
    k->nhandled = (int)n;
    k->fd = fd;
    k->page_size = page_size;
    k->enabled = 1;
    return 0;
}

static void
page_key_dealloc(PyObject *self)
{
    PageKeyObject *k = (PageKeyObject *)self;
    wipe(k->key, sizeof k->key);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *
page_key_disable(PyObject *self, PyObject *unused)
{
    (void)unused;
    __atomic_store_n(&((PageKeyObject *)self)->enabled, 0, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *
page_key_get_enabled(PyObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(__atomic_load_n(&((PageKeyObject *)self)->enabled, __ATOMIC_ACQUIRE));
}

static PyObject *
page_key_get_hits(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&((PageKeyObject *)self)->hits, __ATOMIC_RELAXED));
}

static PyObject *
page_key_get_fallbacks(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&((PageKeyObject *)self)->fallbacks, __ATOMIC_RELAXED));
}

static PyMethodDef page_key_methods[] = {
    {"disable", page_key_disable, METH_NOARGS, "Send every call of the files that hold this key to Python from now on."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef page_key_getset[] = {
    {"enabled", page_key_get_enabled, NULL, "False once disable() was called.", NULL},
    {"hits", page_key_get_hits, NULL, "Pages read and decrypted here.", NULL},
    {"fallbacks", page_key_get_fallbacks, NULL, "Whole-page reads handed to the Python file.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PageKeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turso_sync._fastvfs.PageKey",
    .tp_basicsize = sizeof(PageKeyObject),
    .tp_dealloc = page_key_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PageKey(fd, key, page_size, handled): a database's descriptor and key for the shim's page reads.",
    .tp_methods = page_key_methods,
    .tp_getset = page_key_getset,
    .tp_init = page_key_init,
    .tp_new = PyType_GenericNew,
};

/* ==== the claim handed from the Python file's __init__ to the shim's xOpen (same thread) ==== */

static __thread PageKeyObject *pending_key; /* a strong reference */
static __thread sqlite3_file *pending_unix;
static PyObject *vfsfile_type;                  /* apsw.VFSFile, set by claim's first call */
static const sqlite3_io_methods *unix_methods; /* what the unix VFS gives a file, seen at load */

/* APSW's Python file object (apsw.VFSFile) begins with the unix file it inherits from: its C struct
 * is {PyObject_HEAD; sqlite3_file *base; ...}.  Only trusted when that pointer's methods are the
 * unix VFS's own (so a different layout can only make the lock calls go through Python). */
typedef struct {
    PyObject_HEAD
    sqlite3_file *base;
} VFSFileHead;

static void
drop_pending(void)
{
    PageKeyObject *k = pending_key;
    pending_key = NULL;
    pending_unix = NULL;
    if (k != NULL) {
        PyGILState_STATE g = PyGILState_Ensure();
        Py_DECREF(k);
        PyGILState_Release(g);
    }
}

static PyObject *
claim(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *file;
    sqlite3_file *base = NULL;
    int direct;
    (void)module;

    if (nargs != 3 || !PyObject_TypeCheck(args[1], &PageKeyType)) {
        PyErr_SetString(PyExc_TypeError, "claim(file, key: PageKey, direct: bool)");
        return NULL;
    }
    file = args[0];
    direct = PyObject_IsTrue(args[2]);
    if (direct < 0)
        return NULL;
    if (direct && unix_methods != NULL) {
        if (vfsfile_type == NULL) {
            PyObject *apsw = PyImport_ImportModule("apsw");
            if (apsw == NULL)
                return NULL;
            vfsfile_type = PyObject_GetAttrString(apsw, "VFSFile");
            Py_DECREF(apsw);
            if (vfsfile_type == NULL)
                return NULL;
        }
        if (PyType_Check(vfsfile_type) && PyObject_TypeCheck(file, (PyTypeObject *)vfsfile_type) &&
            ((PyTypeObject *)vfsfile_type)->tp_basicsize >= (Py_ssize_t)sizeof(VFSFileHead)) {
            base = ((VFSFileHead *)file)->base;
            if (base != NULL && base->pMethods != unix_methods)
                base = NULL;
        }
    }
    Py_XSETREF(pending_key, (PageKeyObject *)Py_NewRef(args[1]));
    pending_unix = base;
    return PyBool_FromLong(base != NULL);
}

/* ==== the shim's files ==== */

typedef struct {
    sqlite3_file base;      /* pMethods: shim_io_v1 or shim_io_v2 */
    sqlite3_file *under;    /* the Python VFS's file, in the memory right after this struct */
    sqlite3_file *low_file; /* the unix file under it, when lock calls go straight there; else NULL */
    PageKeyObject *key;     /* NULL: every call goes to `under` */
    gcry_cipher_hd_t gcm;   /* the key's schedule, set once; each page sets only its nonce */
    int nhandled;
    int handled[MAX_HANDLED];
} ShimFile;

#define UNDER(f) (((ShimFile *)(f))->under)
#define FWD(f) (UNDER(f)->pMethods)
/* where a call the Python file leaves to its unix base goes */
#define LOWER(f) (((ShimFile *)(f))->low_file != NULL ? ((ShimFile *)(f))->low_file : UNDER(f))

static int
shim_close(sqlite3_file *pf)
{
    ShimFile *f = (ShimFile *)pf;
    int rc = FWD(f)->xClose(f->under);
    if (f->gcm != NULL) {
        gcry_cipher_close(f->gcm); /* wipes the key schedule */
        f->gcm = NULL;
    }
    if (f->key != NULL) {
        PageKeyObject *k = f->key;
        f->key = NULL;
        f->low_file = NULL;
        if (Py_IsInitialized()) {
            PyGILState_STATE g = PyGILState_Ensure();
            Py_DECREF(k);
            PyGILState_Release(g);
        }
    }
    return rc;
}

/* Decrypt the page in `buf` in place: [ciphertext | tag | nonce] -> [plaintext | 28 zero bytes].
 * 0 when it does not verify (then `buf` holds garbage, which the caller's fallback overwrites). */
static int
open_page(gcry_cipher_hd_t gcm, unsigned char *buf, int page_size)
{
    unsigned char tag[TAG_SIZE], nonce[NONCE_SIZE];
    int ct_len = page_size - RESERVED;

    memcpy(tag, buf + ct_len, TAG_SIZE);
    memcpy(nonce, buf + page_size - NONCE_SIZE, NONCE_SIZE);
    if (gcry_cipher_setiv(gcm, nonce, NONCE_SIZE) != 0 || gcry_cipher_final(gcm) != 0 ||
        gcry_cipher_decrypt(gcm, buf, (size_t)ct_len, NULL, 0) != 0 ||
        gcry_cipher_checktag(gcm, tag, TAG_SIZE) != 0) /* compares in constant time */
        return 0;
    memset(buf + ct_len, 0, RESERVED);
    return 1;
}

static int
shim_read(sqlite3_file *pf, void *buf, int amount, sqlite3_int64 offset)
{
    ShimFile *f = (ShimFile *)pf;
    PageKeyObject *k = f->key;
    ssize_t got;

    if (k == NULL || !__atomic_load_n(&k->enabled, __ATOMIC_ACQUIRE))
        return FWD(f)->xRead(f->under, buf, amount, offset); /* not ours, or not any more */
    if (k->plain) {
        /* a plaintext file's class reads through its unix file unless the replica is partial */
        if (f->low_file == NULL)
            return FWD(f)->xRead(f->under, buf, amount, offset);
        __atomic_fetch_add(&k->hits, 1, __ATOMIC_RELAXED);
        return f->low_file->pMethods->xRead(f->low_file, buf, amount, offset);
    }
    if (amount != k->page_size || offset <= 0 || offset % amount != 0)
        return FWD(f)->xRead(f->under, buf, amount, offset); /* page 1, or part of a page */
    do {
        got = pread(k->fd, buf, (size_t)amount, (off_t)offset);
    } while (got < 0 && errno == EINTR);
    if (got == amount && open_page(f->gcm, buf, amount)) {
        __atomic_fetch_add(&k->hits, 1, __ATOMIC_RELAXED);
        return SQLITE_OK;
    }
    /* past the end, an error, or a page that does not verify: the Python file says which */
    __atomic_fetch_add(&k->fallbacks, 1, __ATOMIC_RELAXED);
    return FWD(f)->xRead(f->under, buf, amount, offset);
}

static int
shim_write(sqlite3_file *f, const void *buf, int amount, sqlite3_int64 offset)
{
    return FWD(f)->xWrite(UNDER(f), buf, amount, offset);
}

static int
shim_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return FWD(f)->xTruncate(UNDER(f), size);
}

static int
shim_sync(sqlite3_file *f, int flags)
{
    return FWD(f)->xSync(UNDER(f), flags);
}

static int
shim_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xFileSize(low, size);
}

static int
shim_lock(sqlite3_file *f, int level)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xLock(low, level);
}

static int
shim_unlock(sqlite3_file *f, int level)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xUnlock(low, level);
}

static int
shim_check_reserved(sqlite3_file *f, int *out)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xCheckReservedLock(low, out);
}

static int
shim_file_control(sqlite3_file *pf, int op, void *arg)
{
    ShimFile *f = (ShimFile *)pf;
    int i;
    if (f->low_file != NULL && op != SQLITE_FCNTL_VFSNAME) {
        for (i = 0; i < f->nhandled; i++)
            if (f->handled[i] == op)
                return FWD(f)->xFileControl(f->under, op, arg);
        return f->low_file->pMethods->xFileControl(f->low_file, op, arg);
    }
    return FWD(f)->xFileControl(f->under, op, arg);
}

static int
shim_sector_size(sqlite3_file *f)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xSectorSize(low);
}

static int
shim_device(sqlite3_file *f)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xDeviceCharacteristics(low);
}

static int
shim_shm_map(sqlite3_file *f, int page, int size, int extend, void volatile **out)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xShmMap(low, page, size, extend, out);
}

static int
shim_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xShmLock(low, offset, n, flags);
}

static void
shim_shm_barrier(sqlite3_file *f)
{
    sqlite3_file *low = LOWER(f);
    low->pMethods->xShmBarrier(low);
}

static int
shim_shm_unmap(sqlite3_file *f, int delete_flag)
{
    sqlite3_file *low = LOWER(f);
    return low->pMethods->xShmUnmap(low, delete_flag);
}

/* every file method, the shared-memory ones only in version 2 (a file whose Python file has them) */
#define SHIM_IO_METHODS(version, shm_map, shm_lock, shm_barrier, shm_unmap)                                  \
    {                                                                                                         \
        version, shim_close, shim_read, shim_write, shim_truncate, shim_sync, shim_file_size, shim_lock,     \
            shim_unlock, shim_check_reserved, shim_file_control, shim_sector_size, shim_device, shm_map,     \
            shm_lock, shm_barrier, shm_unmap, NULL, NULL                                                      \
    }

static const sqlite3_io_methods shim_io_v1 = SHIM_IO_METHODS(1, NULL, NULL, NULL, NULL);
static const sqlite3_io_methods shim_io_v2 =
    SHIM_IO_METHODS(2, shim_shm_map, shim_shm_lock, shim_shm_barrier, shim_shm_unmap);

/* ==== the shim VFS: every call to the Python VFS, whose files it wraps ==== */

#define UNDER_VFS(v) ((sqlite3_vfs *)(v)->pAppData)

static int
shim_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *pf, int flags, int *out_flags)
{
    ShimFile *f = (ShimFile *)pf;
    sqlite3_vfs *under = UNDER_VFS(vfs);
    PageKeyObject *k;
    sqlite3_file *unix_file;
    int rc;

    memset(f, 0, sizeof *f);
    f->under = (sqlite3_file *)(f + 1);
    f->under->pMethods = NULL;
    if (pending_key != NULL)
        drop_pending(); /* left by an open through the Python VFS alone */
    rc = under->xOpen(under, name, f->under, flags, out_flags);
    k = pending_key;
    unix_file = pending_unix;
    pending_key = NULL;
    pending_unix = NULL;
    if (f->under->pMethods == NULL) {
        f->base.pMethods = NULL;
        if (k != NULL) {
            pending_key = k;
            drop_pending();
        }
        return rc == SQLITE_OK ? SQLITE_CANTOPEN : rc;
    }
    f->base.pMethods = (f->under->pMethods->iVersion >= 2 && f->under->pMethods->xShmMap != NULL) ? &shim_io_v2
                                                                                                   : &shim_io_v1;
    if (rc != SQLITE_OK || k == NULL || !(flags & SQLITE_OPEN_MAIN_DB)) {
        if (k != NULL) {
            pending_key = k;
            drop_pending();
        }
        return rc;
    }
    if (!k->plain && (gcry_cipher_open(&f->gcm, k->algo, GCRY_CIPHER_MODE_GCM, 0) != 0 ||
                      gcry_cipher_setkey(f->gcm, k->key, (size_t)k->key_len) != 0)) {
        if (f->gcm != NULL)
            gcry_cipher_close(f->gcm);
        f->gcm = NULL;
        pending_key = k;
        drop_pending(); /* the Python file reads every page */
        return rc;
    }
    f->key = k; /* the claim's reference moves here */
    f->low_file = unix_file;
    f->nhandled = k->nhandled;
    memcpy(f->handled, k->handled, sizeof f->handled);
    return rc;
}

static int
shim_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    return UNDER_VFS(vfs)->xDelete(UNDER_VFS(vfs), name, sync_dir);
}

static int
shim_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
    return UNDER_VFS(vfs)->xAccess(UNDER_VFS(vfs), name, flags, out);
}

static int
shim_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
    return UNDER_VFS(vfs)->xFullPathname(UNDER_VFS(vfs), name, n, out);
}

static void *
shim_dl_open(sqlite3_vfs *vfs, const char *name)
{
    return UNDER_VFS(vfs)->xDlOpen(UNDER_VFS(vfs), name);
}

static void
shim_dl_error(sqlite3_vfs *vfs, int n, char *out)
{
    UNDER_VFS(vfs)->xDlError(UNDER_VFS(vfs), n, out);
}

static void (*shim_dl_sym(sqlite3_vfs *vfs, void *handle, const char *symbol))(void)
{
    return UNDER_VFS(vfs)->xDlSym(UNDER_VFS(vfs), handle, symbol);
}

static void
shim_dl_close(sqlite3_vfs *vfs, void *handle)
{
    UNDER_VFS(vfs)->xDlClose(UNDER_VFS(vfs), handle);
}

static int
shim_randomness(sqlite3_vfs *vfs, int n, char *out)
{
    return UNDER_VFS(vfs)->xRandomness(UNDER_VFS(vfs), n, out);
}

static int
shim_sleep(sqlite3_vfs *vfs, int microseconds)
{
    return UNDER_VFS(vfs)->xSleep(UNDER_VFS(vfs), microseconds);
}

static int
shim_current_time(sqlite3_vfs *vfs, double *out)
{
    return UNDER_VFS(vfs)->xCurrentTime(UNDER_VFS(vfs), out);
}

static int
shim_last_error(sqlite3_vfs *vfs, int n, char *out)
{
    return UNDER_VFS(vfs)->xGetLastError(UNDER_VFS(vfs), n, out);
}

static int
shim_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
    return UNDER_VFS(vfs)->xCurrentTimeInt64(UNDER_VFS(vfs), out);
}

static sqlite3_vfs shim_vfs; /* filled from the Python VFS at load */

static int
probe_unix_methods(void)
{
    /* the methods the unix VFS gives a main database file (other kinds get its no-lock methods),
     * to recognise the one under an APSW file: an empty file made for the purpose, opened and gone */
    sqlite3_vfs *unix_vfs = api->vfs_find("unix");
    const char *dir = getenv("TMPDIR");
    char path[4096];
    sqlite3_file *probe;
    int fd, rc, out = 0;

    if (unix_vfs == NULL)
        return SQLITE_OK; /* no direct lock calls */
    if (dir == NULL || dir[0] == 0 || strlen(dir) > sizeof path - 64)
        dir = "/tmp";
    snprintf(path, sizeof path, "%s/turso-sync-vfs-probe-XXXXXX", dir);
    fd = mkstemp(path);
    if (fd < 0)
        return SQLITE_OK;
    close(fd);
    probe = (sqlite3_file *)api->malloc(unix_vfs->szOsFile);
    if (probe == NULL) {
        unlink(path);
        return SQLITE_NOMEM;
    }
    memset(probe, 0, (size_t)unix_vfs->szOsFile);
    /* SQLite keeps the name's memory for the file's life: a URI-less name, double NUL as it expects */
    path[strlen(path) + 1] = 0;
    rc = unix_vfs->xOpen(unix_vfs, path, probe, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MAIN_DB, &out);
    if (probe->pMethods != NULL) {
        if (rc == SQLITE_OK)
            unix_methods = probe->pMethods;
        probe->pMethods->xClose(probe);
    }
    api->free(probe);
    unlink(path);
    return SQLITE_OK;
}

/* The loadable extension's entry point: register "turso_sync_c" over "turso_sync" (once). */
__attribute__((visibility("default"))) int
turso_sync_fastvfs_init(sqlite3 *db, char **err, const sqlite3_api_routines *routines)
{
    sqlite3_vfs *under;
    (void)db;

    if (api != NULL)
        return SQLITE_OK_LOAD_PERMANENTLY; /* registered already */
    api = routines;
    under = api->vfs_find(UNDER_NAME);
    if (under == NULL) {
        api = NULL;
        if (err != NULL)
            *err = routines->mprintf("the VFS %s is not registered", UNDER_NAME);
        return SQLITE_ERROR;
    }
    if (probe_unix_methods() != SQLITE_OK) {
        api = NULL;
        return SQLITE_NOMEM;
    }
    memset(&shim_vfs, 0, sizeof shim_vfs);
    shim_vfs.iVersion = under->iVersion >= 2 ? 2 : 1;
    shim_vfs.szOsFile = (int)sizeof(ShimFile) + under->szOsFile;
    shim_vfs.mxPathname = under->mxPathname;
    shim_vfs.zName = SHIM_NAME;
    shim_vfs.pAppData = under;
    shim_vfs.xOpen = shim_open;
    shim_vfs.xDelete = shim_delete;
    shim_vfs.xAccess = shim_access;
    shim_vfs.xFullPathname = shim_full_pathname;
    shim_vfs.xDlOpen = under->xDlOpen ? shim_dl_open : NULL;
    shim_vfs.xDlError = under->xDlError ? shim_dl_error : NULL;
    shim_vfs.xDlSym = under->xDlSym ? shim_dl_sym : NULL;
    shim_vfs.xDlClose = under->xDlClose ? shim_dl_close : NULL;
    shim_vfs.xRandomness = shim_randomness;
    shim_vfs.xSleep = shim_sleep;
    shim_vfs.xCurrentTime = shim_current_time;
    shim_vfs.xGetLastError = under->xGetLastError ? shim_last_error : NULL;
    if (shim_vfs.iVersion >= 2)
        shim_vfs.xCurrentTimeInt64 = under->xCurrentTimeInt64 ? shim_current_time64 : NULL;
    if (api->vfs_register(&shim_vfs, 0) != SQLITE_OK) {
        api = NULL;
        return SQLITE_ERROR;
    }
    return SQLITE_OK_LOAD_PERMANENTLY;
}

/* ==== the Python module ==== */

static PyObject *
registered(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyBool_FromLong(api != NULL);
}

static PyObject *
direct_lock_calls(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyBool_FromLong(unix_methods != NULL);
}

static PyMethodDef module_methods[] = {
    {"claim", (PyCFunction)(void (*)(void))claim, METH_FASTCALL,
     "claim(file, key, direct) -> bool: the shim's open under way in this thread takes key for file; True when "
     "its lock calls will go straight to the unix file."},
    {"registered", registered, METH_NOARGS, "True once the extension was loaded and " SHIM_NAME " registered."},
    {"direct_lock_calls", direct_lock_calls, METH_NOARGS,
     "True when the unix VFS's file methods were seen at load (lock calls may skip Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastvfs_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "turso_sync._fastvfs",
    .m_doc = "A VFS in C in front of turso_sync's Python VFS: encrypted page reads and lock calls without Python.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fastvfs(void)
{
    PyObject *m;
    if (PyType_Ready(&PageKeyType) < 0)
        return NULL;
    /* libgcrypt wants its version checked (which initialises it) before any other call, once per
     * process; a program that has done so already, with its own settings, keeps them */
    if (!gcry_control(GCRYCTL_INITIALIZATION_FINISHED_P)) {
        if (gcry_check_version(GCRYPT_VERSION) == NULL) {
            PyErr_Format(PyExc_ImportError, "libgcrypt is older than the %s this module was built with", GCRYPT_VERSION);
            return NULL;
        }
        gcry_control(GCRYCTL_DISABLE_SECMEM, 0); /* no locked pool: the key lives in the Python process anyway */
        gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    }
    m = PyModule_Create(&fastvfs_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "PageKey", (PyObject *)&PageKeyType) < 0 ||
        PyModule_AddStringConstant(m, "SHIM_NAME", SHIM_NAME) < 0 ||
        PyModule_AddStringConstant(m, "UNDER_NAME", UNDER_NAME) < 0 ||
        PyModule_AddStringConstant(m, "ENTRY_POINT", ENTRY_POINT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
