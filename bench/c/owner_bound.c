/* A bound for bench_spawn.py --bounds, not part of pyclone3: the least a
 * spawn + wait could cost if the child's owner were written against the
 * CPython C API instead of in Python. One call encodes argv, packs it with
 * pyclone3's own pyclone3_set_argv and spawns with pyclone3_spawn (clone3
 * only, no checks, no fallback: an absolute program path, as the benchmark
 * passes); the owner object holds the pidfd and a lock, waits with one
 * waitid (the GIL released) and makes the status with the Python factory
 * it was given, as pyclone3's WaitStatus is a Python class; with-exit and
 * close close the pidfd. pyclone3's C functions are reached through the
 * addresses its cffi module gives (see spawn_bounds.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

typedef long (*spawn_fn)(void *s, int method, int clear_sighand, char *stack, size_t stack_size,
                         int *pidfd);
typedef int (*set_argv_fn)(void *s, char **out, const char *blob, size_t len, size_t n_argv,
                           size_t n_paths);
typedef int (*waitid_fn)(int idtype, int id, void *buf, int options);

#define MAX_ARGS 64
#define BLOB_SIZE 4096
#define SPAWN_SIZE 1024
#define WAITBUF_SIZE 512
#define P_PIDFD_ID 3
#define WEXITED_WALL (4 | 0x40000000)

static spawn_fn do_spawn;
static set_argv_fn do_set_argv;
static waitid_fn do_waitid;
static const void *spawn_template;
static size_t spawn_size;
static char *stack;
static size_t stack_size;
static int method;
static PyObject *status_factory; /* factory(address of the wait buffer) -> status */

typedef struct {
    PyObject_HEAD
    int fd;
    int pid;
    PyObject *status;
    PyThread_type_lock lock;
} Owner;

static void owner_close_fd(Owner *self) {
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    int fd = self->fd;
    self->fd = -1;
    PyThread_release_lock(self->lock);
    if (fd >= 0)
        close(fd);
}

static void owner_dealloc(Owner *self) {
    if (self->lock) {
        owner_close_fd(self);
        PyThread_free_lock(self->lock);
    }
    Py_XDECREF(self->status);
    PyObject_Free(self);
}

static PyObject *owner_enter(PyObject *self, PyObject *unused) {
    Py_INCREF(self);
    return self;
}

static PyObject *owner_close(Owner *self, PyObject *unused) {
    owner_close_fd(self);
    Py_RETURN_NONE;
}

static PyObject *owner_wait(Owner *self, PyObject *unused) {
    if (self->status) {
        Py_INCREF(self->status);
        return self->status;
    }
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    int fd = self->fd;
    PyThread_release_lock(self->lock);
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    long long buf[WAITBUF_SIZE / sizeof(long long)];
    int r;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = do_waitid(P_PIDFD_ID, fd, buf, WEXITED_WALL);
        Py_END_ALLOW_THREADS
        if (r >= 0)
            break;
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals())
            return NULL;
    }
    PyObject *address = PyLong_FromVoidPtr(buf);
    if (!address)
        return NULL;
    PyObject *status = PyObject_CallOneArg(status_factory, address);
    Py_DECREF(address);
    if (!status)
        return NULL;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    if (!self->status) {
        Py_INCREF(status);
        self->status = status;
    }
    PyThread_release_lock(self->lock);
    return status;
}

static PyMethodDef owner_methods[] = {
    {"__enter__", owner_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)owner_close, METH_VARARGS, NULL},
    {"close", (PyCFunction)owner_close, METH_NOARGS, NULL},
    {"wait", (PyCFunction)owner_wait, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject OwnerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "owner_bound.Owner",
    .tp_basicsize = sizeof(Owner),
    .tp_dealloc = (destructor)owner_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = owner_methods,
};

static PyObject *spawn(PyObject *module, PyObject *args) {
    if (!do_spawn) {
        PyErr_SetString(PyExc_RuntimeError, "init() first");
        return NULL;
    }
    if (!PyList_CheckExact(args) || PyList_GET_SIZE(args) < 1 ||
        PyList_GET_SIZE(args) > MAX_ARGS) {
        PyErr_SetString(PyExc_TypeError, "a list of 1 to 64 str");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(args);
    char blob[BLOB_SIZE];
    size_t used = 0;
    /* argv, then the one exec candidate: argv[0] itself */
    for (Py_ssize_t i = 0; i <= n; i++) {
        PyObject *encoded = PyUnicode_EncodeFSDefault(PyList_GET_ITEM(args, i < n ? i : 0));
        if (!encoded)
            return NULL;
        size_t len = (size_t)PyBytes_GET_SIZE(encoded);
        if (used + len + 1 > sizeof(blob)) {
            Py_DECREF(encoded);
            PyErr_SetString(PyExc_ValueError, "arguments too long for the bound");
            return NULL;
        }
        memcpy(blob + used, PyBytes_AS_STRING(encoded), len + 1);
        used += len + 1;
        Py_DECREF(encoded);
    }
    _Alignas(max_align_t) char s[SPAWN_SIZE];
    char *arrays[MAX_ARGS + 3 + BLOB_SIZE / sizeof(char *)];
    memcpy(s, spawn_template, spawn_size);
    if (do_set_argv(s, arrays, blob, used, (size_t)n, 1) < 0) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    int pidfd = -1;
    long pid = do_spawn(s, method, 1, stack, stack_size, &pidfd);
    if (pid < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Owner *owner = PyObject_New(Owner, &OwnerType);
    if (!owner) {
        close(pidfd);
        return NULL;
    }
    owner->fd = pidfd;
    owner->pid = (int)pid;
    owner->status = NULL;
    owner->lock = PyThread_allocate_lock();
    if (!owner->lock) {
        Py_DECREF(owner);
        close(pidfd);
        return PyErr_NoMemory();
    }
    return (PyObject *)owner;
}

static PyObject *init(PyObject *module, PyObject *args) {
    unsigned long long spawn_at, set_argv_at, waitid_at, template_at, stack_at;
    Py_ssize_t template_len, stack_len;
    PyObject *factory;
    if (!PyArg_ParseTuple(args, "KKKKnKniO", &spawn_at, &set_argv_at, &waitid_at, &template_at,
                          &template_len, &stack_at, &stack_len, &method, &factory))
        return NULL;
    if (template_len > SPAWN_SIZE) {
        PyErr_SetString(PyExc_ValueError, "spawn struct larger than the bound's room");
        return NULL;
    }
    do_spawn = (spawn_fn)(uintptr_t)spawn_at;
    do_set_argv = (set_argv_fn)(uintptr_t)set_argv_at;
    do_waitid = (waitid_fn)(uintptr_t)waitid_at;
    spawn_template = (const void *)(uintptr_t)template_at;
    spawn_size = (size_t)template_len;
    stack = (char *)(uintptr_t)stack_at;
    stack_size = (size_t)stack_len;
    Py_INCREF(factory);
    Py_XSETREF(status_factory, factory);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"spawn", spawn, METH_O, NULL},
    {"init", init, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "owner_bound", NULL, -1,
                                        module_methods};

PyMODINIT_FUNC PyInit_owner_bound(void) {
    if (PyType_Ready(&OwnerType) < 0)
        return NULL;
    return PyModule_Create(&module_def);
}
