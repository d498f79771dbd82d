/* smallmind._scopelog: the profiler's event log, so that a timed scope costs little more
 * than the `with` statement itself.
 *
 * EventLog(capacity) owns two preallocated arrays: scope ids and CLOCK_MONOTONIC
 * nanoseconds (the clock of time.perf_counter_ns). A ScopeHandle made by log.handle(id)
 * appends (id, now) on __enter__ and (~id, now) on __exit__: no allocation, no Python
 * frame. The Python recorder drains the log and builds the scope tree from it. A full log
 * drops further events and sets `overflowed`, which the recorder reports as an error.
 * scope(name) is smallmind.scope.scope without a Python frame: the shared no-op handle when no
 * table is set (nobody records), else table[name] (a dict whose __missing__ makes entries). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    int32_t *ids;
    int64_t *times;
    Py_ssize_t n, cap;
    int overflowed;
} EventLog;

typedef struct {
    PyObject_HEAD
    EventLog *log;
    int32_t id;
} ScopeHandle;

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void record(EventLog *log, int32_t id)
{
    if (log->n < log->cap) {
        log->ids[log->n] = id;
        log->times[log->n] = now_ns();
        log->n++;
    } else {
        log->overflowed = 1;
    }
}

/* ---- ScopeHandle ---------------------------------------------------------------------- */

static PyObject *handle_enter(PyObject *self, PyObject *unused)
{
    ScopeHandle *h = (ScopeHandle *)self;
    if (h->log != NULL) record(h->log, h->id);
    Py_RETURN_NONE;
}

static PyObject *handle_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    ScopeHandle *h = (ScopeHandle *)self;
    if (h->log != NULL) record(h->log, ~h->id);
    Py_RETURN_FALSE;
}

static void handle_dealloc(PyObject *self)
{
    Py_XDECREF((PyObject *)((ScopeHandle *)self)->log);
    Py_TYPE(self)->tp_free(self);
}

static PyMethodDef handle_methods[] = {
    {"__enter__", handle_enter, METH_NOARGS, "record the scope's start"},
    {"__exit__", (PyCFunction)(void (*)(void))handle_exit, METH_FASTCALL, "record the scope's end"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScopeHandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "smallmind._scopelog.ScopeHandle",
    .tp_basicsize = sizeof(ScopeHandle),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Context manager recording one scope's enter and exit into its EventLog.",
    .tp_dealloc = handle_dealloc,
    .tp_methods = handle_methods,
};

/* ---- EventLog ------------------------------------------------------------------------- */

static PyObject *log_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", NULL};
    Py_ssize_t cap;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &cap)) return NULL;
    if (cap < 1 || cap > ((Py_ssize_t)1 << 30)) {
        PyErr_SetString(PyExc_ValueError, "EventLog capacity must be in [1, 2**30]");
        return NULL;
    }
    EventLog *log = (EventLog *)type->tp_alloc(type, 0);
    if (log == NULL) return NULL;
    log->ids = PyMem_RawMalloc((size_t)cap * sizeof(int32_t));
    log->times = PyMem_RawMalloc((size_t)cap * sizeof(int64_t));
    if (log->ids == NULL || log->times == NULL) {
        Py_DECREF(log);
        return PyErr_NoMemory();
    }
    log->cap = cap;
    return (PyObject *)log;
}

static void log_dealloc(PyObject *self)
{
    EventLog *log = (EventLog *)self;
    PyMem_RawFree(log->ids);
    PyMem_RawFree(log->times);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *log_handle(PyObject *self, PyObject *arg)
{
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred()) return NULL;
    if (id < 0 || id > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "scope id must be in [0, 2**31)");
        return NULL;
    }
    ScopeHandle *h = PyObject_New(ScopeHandle, &ScopeHandleType);
    if (h == NULL) return NULL;
    Py_INCREF(self);
    h->log = (EventLog *)self;
    h->id = (int32_t)id;
    return (PyObject *)h;
}

/* drain() -> (ids: bytes of int32, times: bytes of int64); empties the log */
static PyObject *log_drain(PyObject *self, PyObject *unused)
{
    EventLog *log = (EventLog *)self;
    PyObject *ids = PyBytes_FromStringAndSize((const char *)log->ids, log->n * (Py_ssize_t)sizeof(int32_t));
    PyObject *times = PyBytes_FromStringAndSize((const char *)log->times, log->n * (Py_ssize_t)sizeof(int64_t));
    if (ids == NULL || times == NULL) {
        Py_XDECREF(ids);
        Py_XDECREF(times);
        return NULL;
    }
    log->n = 0;
    return Py_BuildValue("(NN)", ids, times);
}

static PyObject *log_get_overflowed(PyObject *self, void *closure)
{
    return PyBool_FromLong(((EventLog *)self)->overflowed);
}

static PyObject *log_get_size(PyObject *self, void *closure)
{
    return PyLong_FromSsize_t(((EventLog *)self)->n);
}

static PyMethodDef log_methods[] = {
    {"handle", log_handle, METH_O, "handle(id) -> a context manager logging scope `id`"},
    {"drain", log_drain, METH_NOARGS, "drain() -> (int32 ids, int64 ns) as bytes; empties the log"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef log_getset[] = {
    {"overflowed", log_get_overflowed, NULL, "events were dropped because the log was full", NULL},
    {"size", log_get_size, NULL, "events held", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EventLogType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "smallmind._scopelog.EventLog",
    .tp_basicsize = sizeof(EventLog),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "EventLog(capacity): preallocated (scope id, ns) events; ~id marks an exit.",
    .tp_new = log_new,
    .tp_dealloc = log_dealloc,
    .tp_methods = log_methods,
    .tp_getset = log_getset,
};

/* ---- scope(name) ---------------------------------------------------------------------- */

static PyObject *g_null = NULL;   /* the shared no-op handle */
static PyObject *g_table = NULL;  /* name -> context manager while a recorder is installed */

static PyObject *py_scope(PyObject *module, PyObject *name)
{
    PyObject *table = g_table;
    if (table == NULL) return Py_NewRef(g_null);
    PyObject *handle = PyDict_GetItemWithError(table, name);
    if (handle != NULL) return Py_NewRef(handle);
    if (PyErr_Occurred()) return NULL;
    return PyObject_GetItem(table, name);  /* the table's __missing__ makes the entry */
}

static PyObject *py_set_table(PyObject *module, PyObject *table)
{
    if (table != Py_None && !PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "the scope table must be a dict (or subclass) or None");
        return NULL;
    }
    Py_XSETREF(g_table, table == Py_None ? NULL : Py_NewRef(table));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"scope", py_scope, METH_O, "scope(name) -> the context manager timing `name`, or a no-op"},
    {"set_table", py_set_table, METH_O, "set_table(dict or None): where scope() finds its handles"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_scopelog", "The profiler's native scope event log.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__scopelog(void)
{
    if (PyType_Ready(&ScopeHandleType) < 0 || PyType_Ready(&EventLogType) < 0) return NULL;
    ScopeHandle *null = PyObject_New(ScopeHandle, &ScopeHandleType);
    if (null == NULL) return NULL;
    null->log = NULL;
    null->id = 0;
    g_null = (PyObject *)null;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    Py_INCREF(&EventLogType);
    if (PyModule_AddObject(m, "EventLog", (PyObject *)&EventLogType) < 0) {
        Py_DECREF(&EventLogType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
