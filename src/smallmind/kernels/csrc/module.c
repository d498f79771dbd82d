/* smallmind.kernels._native: validation, layout handling and threading around the
 * per-ISA kernels. Every argument is checked here (shapes, dtypes, strides, aliasing,
 * index ranges) before any kernel runs: a bad input raises KernelInputError (or
 * IndexError for token ids / positions, like the references), never a crash. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gemm.h"
#include "kernels.h"
#include "pool.h"
#include "sm_math.h"
#include "quant.h"
#include "train_attention.h"

#ifdef SM_HAVE_X86
#include <cpuid.h>
#endif
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define SM_MAXD 8

static PyObject *KernelInputError;
static PyObject *np_shares_memory, *np_too_hard;
static const KernelTable *K = &sm_table_generic;
static const GemmTable *G = &sm_gtable_generic;
/* the quantized kernels' build: AMX, AVX-512 VNNI, AVX2 or portable (qtable_for) */
static const QuantTable *Q = &sm_qtable_generic;
/* the AVX2 build of the training attention also serves AVX-512 machines */
static const TrainAttnTable *TA = &sm_tatable_generic;
/* Above this many rows linear() hands over to BLAS. With more than one thread the cut-over
 * is higher: after each call OpenBLAS's idle threads spin for ~0.1 s (its default thread
 * timeout), fighting our pool for the cores, which halves decode speed after a prefill;
 * our kernel matches single-threaded BLAS up to about 128 rows, so mid-size prefills stay
 * native. */
static long linear_max_t = 32;
static long linear_max_t_threaded = 128;
static long parallel_min_work = 32768;  /* below this many flops-ish, stay on one thread */
/* below this much work a kernel keeps the GIL: it ends within some 10 us, and a thread that lets
 * go of the GIL waits to get it back while another Python thread runs (up to the switch
 * interval), which would cost a server's engine thread more than such a kernel itself */
static long gil_min_work = 1L << 18;
/* From this many rows on, the products (plain and fused) run on the native GEMM instead of
 * handing over to BLAS. Set per ISA from measurements (benchmarks/gemm_vs_blas.py): the AVX2
 * micro-kernel reaches 90-95% of OpenBLAS's single-thread speed on our shapes and the fused
 * epilogues save whole passes, so it runs everything there; on AVX-512 machines BLAS keeps
 * the products until the AVX-512 micro-kernel (isa_gemm_avx512.c, so far tested only in its
 * emulated build) is measured on one; the portable build's kernel is for tests (forced
 * through gemm_min_rows). */
static long gemm_min_rows = LONG_MAX;
/* bf16_products(on): the products of the native GEMM in BF16 (inputs rounded to it, float32
 * sums: dpbf16ps) on tables that have the BF16 tile, whatever gemm_min_rows (BLAS has none);
 * `--precision bf16` training turns it on around its steps */
static int bf16_products;

static int gemm_bf16(void);
/* the native GEMM takes a product of T rows */
static int gemm_takes(long T) { return T >= gemm_min_rows || gemm_bf16(); }

/* ---------------------------------------------------------------- array views */

enum { KIND_F32, KIND_INT, KIND_CACHE };  /* KIND_CACHE: a KV cache, float32 or float16 */

typedef struct {
    PyArrayObject *arr;  /* the caller's array (borrowed) */
    PyArrayObject *tmp;  /* owned C-contiguous copy when the caller's layout needs one */
    char *data;
    int nd, elsize, type;
    npy_intp shape[SM_MAXD], st[SM_MAXD];  /* strides in elements */
    long rows, cols, rs;                   /* the view as rows of its last dim */
    int writeback;
} View;

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg) {
        PyErr_SetObject(KernelInputError, msg);
        Py_DECREF(msg);
    }
    return -1;
}

static int layout_ok(PyArrayObject *a, int elsize)
{
    int nd = PyArray_NDIM(a);
    if (((uintptr_t)PyArray_DATA(a)) % (uintptr_t)elsize) return 0;
    for (int d = 0; d < nd; d++) {
        npy_intp s = PyArray_STRIDE(a, d), n = PyArray_DIM(a, d);
        if (n > 1 && s % elsize) return 0;
        if (d == nd - 1 && n > 1 && s != elsize) return 0;
    }
    return 1;
}

/* Fold the leading dims into one row index with a single row stride, if the layout
 * allows (size-1 dims carry no stride information). */
static int fold_rows(View *v)
{
    int nd = v->nd;
    if (nd == 0) { v->rows = 1; v->cols = 1; v->rs = 1; return 1; }
    v->cols = (long)v->shape[nd - 1];
    long rows = 1;
    for (int d = 0; d < nd - 1; d++) rows *= (long)v->shape[d];
    v->rows = rows;
    v->rs = v->cols;
    if (rows == 0) return 1;
    long rs = 0, inner = 1;
    int have = 0;
    for (int d = nd - 2; d >= 0; d--) {
        if (v->shape[d] != 1) {
            if (!have) { rs = (long)v->st[d]; have = 1; }
            else if ((long)v->st[d] != rs * inner) return 0;
        }
        if (have) inner *= (long)v->shape[d];
    }
    if (have) v->rs = rs;
    return 1;
}

static void view_fill(View *v, PyArrayObject *a)
{
    v->data = PyArray_DATA(a);
    v->nd = PyArray_NDIM(a);
    for (int d = 0; d < v->nd; d++) {
        v->shape[d] = PyArray_DIM(a, d);
        v->st[d] = PyArray_STRIDE(a, d) / v->elsize;
    }
}

/* nd >= 0: exactly that rank; -1: any rank; -2: rank >= 1; -3: rank >= 2.
 * rows: also fold the view into (rows, cols, row stride), copying when it cannot fold. */
static int view_get(View *v, PyObject *o, const char *name, int kind, int nd, int writable, int rows)
{
    memset(v, 0, sizeof *v);
    if (!PyArray_Check(o))
        return fail("%s must be a numpy array, got %s", name, Py_TYPE(o)->tp_name);
    PyArrayObject *a = (PyArrayObject *)o;
    int t = PyArray_TYPE(a);
    if (kind == KIND_F32 && (t != NPY_FLOAT32 || !PyArray_ISNOTSWAPPED(a)))
        return fail("%s must be float32, got %s", name, PyArray_DESCR(a)->typeobj->tp_name);
    if (kind == KIND_CACHE && ((t != NPY_FLOAT32 && t != NPY_FLOAT16) || !PyArray_ISNOTSWAPPED(a)))
        return fail("%s must be float32 or float16, got %s", name, PyArray_DESCR(a)->typeobj->tp_name);
    if (kind == KIND_INT && ((t != NPY_INT32 && t != NPY_INT64) || !PyArray_ISNOTSWAPPED(a)))
        return fail("%s must be int32 or int64 token ids, got %s", name,
                    PyArray_DESCR(a)->typeobj->tp_name);
    int have = PyArray_NDIM(a);
    if (nd >= 0 && have != nd) return fail("%s must be %dD, got %dD", name, nd, have);
    if (nd == -2 && have < 1) return fail("%s must have at least 1 dimension", name);
    if (nd == -3 && have < 2) return fail("%s must have at least 2 dimensions, got %dD", name, have);
    if (have > SM_MAXD) return fail("%s has %d dimensions; kernels take at most %d", name, have, SM_MAXD);
    if (writable && !PyArray_ISWRITEABLE(a)) return fail("%s is read-only", name);
    v->arr = a;
    v->type = t;
    v->elsize = (int)PyArray_ITEMSIZE(a);
    v->writeback = writable;
    if (layout_ok(a, v->elsize)) {
        view_fill(v, a);
        if (!rows || fold_rows(v)) return 0;
    }
    /* last dim not unit-stride, misaligned, or leading dims that do not fold: work on a
     * contiguous copy (written back into the caller's array for outputs) */
    v->tmp = (PyArrayObject *)PyArray_NewCopy(a, NPY_CORDER);
    if (!v->tmp) return -1;
    view_fill(v, v->tmp);
    if (rows) fold_rows(v);
    return 0;
}

static int view_done(View *v, int ok)
{
    int rc = 0;
    if (v->tmp) {
        if (ok && v->writeback) rc = PyArray_CopyInto(v->arr, v->tmp);
        Py_CLEAR(v->tmp);
    }
    return rc;
}

static void extent(PyArrayObject *a, char **lo, char **hi)
{
    char *p = PyArray_DATA(a), *l = p, *h = p;
    for (int d = 0; d < PyArray_NDIM(a); d++) {
        npy_intp n = PyArray_DIM(a, d);
        if (n == 0) { *lo = *hi = p; return; }
        npy_intp span = (n - 1) * PyArray_STRIDE(a, d);
        if (span < 0) l += span; else h += span;
    }
    *lo = l;
    *hi = h + PyArray_ITEMSIZE(a);
}

static int same_array(PyArrayObject *a, PyArrayObject *b)
{
    if (PyArray_DATA(a) != PyArray_DATA(b) || PyArray_NDIM(a) != PyArray_NDIM(b) ||
        PyArray_TYPE(a) != PyArray_TYPE(b))
        return 0;
    for (int d = 0; d < PyArray_NDIM(a); d++)
        if (PyArray_DIM(a, d) != PyArray_DIM(b, d) ||
            (PyArray_DIM(a, d) > 1 && PyArray_STRIDE(a, d) != PyArray_STRIDE(b, d)))
            return 0;
    return 1;
}

/* Deciding exactly whether two strided views share memory can take exponential time; past
 * this much work (search steps of NumPy's solver) the pair is refused as if it overlapped. */
#define SM_OVERLAP_MAX_WORK (1L << 20)

/* out must not share memory with in, whatever their dtypes, except (allow_same) being
 * exactly the same array. */
static int no_overlap(View *out, const char *oname, View *in, const char *iname, int allow_same)
{
    if (!out->arr || !in->arr) return 0;
    char *alo, *ahi, *blo, *bhi;
    extent(out->arr, &alo, &ahi);
    extent(in->arr, &blo, &bhi);
    if (alo == ahi || blo == bhi || ahi <= blo || bhi <= alo) return 0;
    if (allow_same && same_array(out->arr, in->arr)) return 0;
    PyObject *r = PyObject_CallFunction(np_shares_memory, "OOl", (PyObject *)out->arr, (PyObject *)in->arr,
                                        SM_OVERLAP_MAX_WORK);
    int shares = 1;
    if (r) {
        shares = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (shares < 0) return -1;
    } else if (PyErr_ExceptionMatches(np_too_hard)) {
        PyErr_Clear();
    } else {
        return -1;
    }
    if (shares) {
        if (allow_same) return fail("%s must be %s itself or not overlap it", oname, iname);
        return fail("%s must not overlap %s", oname, iname);
    }
    return 0;
}

/* Every output (bit i of `outs`) against every other array of the call, of any dtype:
 * no shared memory, except output i being exactly array j where bit j of same_ok[i] is set
 * (the in-place uses a kernel supports). Arrays given as None are skipped. */
static int views_apart(View *v, const char *const *names, int n, unsigned outs, const unsigned *same_ok)
{
    for (int i = 0; i < n; i++) {
        if (!(outs >> i & 1)) continue;
        for (int j = 0; j < n; j++) {
            if (j == i || (j < i && (outs >> j & 1))) continue;  /* each pair of outputs once */
            int allow = same_ok && (same_ok[i] >> j & 1);
            if (no_overlap(&v[i], names[i], &v[j], names[j], allow)) return -1;
        }
    }
    return 0;
}

static int same_shape(View *a, const char *an, View *b, const char *bn)
{
    int eq = a->nd == b->nd;
    for (int d = 0; eq && d < a->nd; d++) eq = a->shape[d] == b->shape[d];
    if (eq) return 0;
    PyObject *sa = PyObject_GetAttrString((PyObject *)a->arr, "shape");
    PyObject *sb = PyObject_GetAttrString((PyObject *)b->arr, "shape");
    if (sa && sb) fail("%s shape %R does not match %s shape %R", bn, sb, an, sa);
    Py_XDECREF(sa);
    Py_XDECREF(sb);
    return -1;
}

static int want_dim(View *v, const char *name, int d, long n, const char *what)
{
    if ((long)v->shape[d] == n) return 0;
    return fail("%s dim %d is %ld but must be %ld (%s)", name, d, (long)v->shape[d], n, what);
}

#define F(v) ((float *)(v).data)

static int get_long(PyObject *o, const char *name, long *out)
{
    long x = PyLong_AsLong(o);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return fail("%s must be an integer, got %s", name, Py_TYPE(o)->tp_name);
    }
    *out = x;
    return 0;
}

static int get_float(PyObject *o, const char *name, double *out)
{
    double x = PyFloat_AsDouble(o);
    if (x == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return fail("%s must be a number, got %s", name, Py_TYPE(o)->tp_name);
    }
    *out = x;
    return 0;
}

static int nargs_ok(Py_ssize_t n, Py_ssize_t want, const char *fn)
{
    if (n == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", fn, want, n);
    return -1;
}

/* run fn over [0, total) of `work`: inline when small, on the pool when not, letting go of the
 * GIL when gil_work (the work one holding of the GIL is weighed by) is large */
static void run_gil(sm_task_fn fn, void *ctx, long total, long grain, double work, double gil_work)
{
    if (work < (double)parallel_min_work) {
        fn(ctx, 0, total);
        return;
    }
    if (gil_work < (double)gil_min_work) {
        sm_parallel_for(fn, ctx, total, grain);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    sm_parallel_for(fn, ctx, total, grain);
    Py_END_ALLOW_THREADS
}

static void run(sm_task_fn fn, void *ctx, long total, long grain, double work)
{
    run_gil(fn, ctx, total, grain, work, work);
}

/* release the caller's views; on success return `ret` (new reference), else NULL */
static PyObject *finish(View *views, int n, int ok, PyObject *ret)
{
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (view_done(&views[i], ok && rc == 0) < 0) rc = -1;
    if (!ok || rc < 0) return NULL;
    Py_INCREF(ret);
    return ret;
}

/* ---------------------------------------------------------------- linear */

/* run the GEMM without the GIL; MemoryError when its packing buffer cannot be had */
static int gemm_bf16(void) { return bf16_products && G->tile_bf16 != NULL; }

static int gemm_run(const GemmArgs *g0)
{
    int rc;
    GemmArgs g = *g0;
    g.bf16 = gemm_bf16();
    Py_BEGIN_ALLOW_THREADS
    rc = sm_gemm(G, &g);
    Py_END_ALLOW_THREADS
    if (rc) PyErr_NoMemory();
    return rc;
}


static void linear_task(void *ctx, long a, long b) { K->linear_cols((const LinearArgs *)ctx, a, b); }

/* linear(x, w, b, out, accumulate) -> True when computed here, False when the caller
 * should use BLAS (many rows); arguments are fully validated either way. */
static PyObject *py_linear(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "linear")) return NULL;
    static const char *const names[4] = {"x", "w", "b", "out"};
    View v[4] = {0};
    int ok = 0;
    int acc = PyObject_IsTrue(args[4]);
    if (acc < 0) return NULL;
    int has_b = args[2] != Py_None;
    if (view_get(&v[0], args[0], "x", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "w", KIND_F32, 2, 0, 0) ||
        (has_b && view_get(&v[2], args[2], "b", KIND_F32, 1, 0, 0)) ||
        view_get(&v[3], args[3], "out", KIND_F32, 2, 1, 0))
        goto done;
    long T = v[0].shape[0], Kd = v[0].shape[1], N = v[1].shape[0];
    if (want_dim(&v[1], "w", 1, Kd, "x's features") || (has_b && want_dim(&v[2], "b", 0, N, "w's rows")) ||
        want_dim(&v[3], "out", 0, T, "x's rows") || want_dim(&v[3], "out", 1, N, "w's rows"))
        goto done;
    if (views_apart(v, names, 4, 1u << 3, NULL)) goto done;
    if (T > (sm_pool_threads() > 1 ? linear_max_t_threaded : linear_max_t)) {
        if (!gemm_takes(T)) {
            for (int i = 0; i < 4; i++) view_done(&v[i], 0);
            Py_RETURN_FALSE;
        }
        GemmArgs g = {F(v[0]), (long)v[0].st[0], 1, F(v[1]), 1, (long)v[1].st[0], F(v[3]), (long)v[3].st[0],
                      T, N, Kd, 1.0f, acc, has_b ? F(v[2]) : NULL, NULL, 0, NULL, 0, NULL, 0};
        ok = Kd > 0 && gemm_run(&g) == 0;
        if (Kd > 0) goto done;
        for (int i = 0; i < 4; i++) view_done(&v[i], 0);
        Py_RETURN_FALSE;  /* no features: BLAS's empty sum and the bias */
    }
    LinearArgs la = {F(v[0]), F(v[1]), has_b ? F(v[2]) : NULL, F(v[3]), T, Kd, N,
                     (long)v[0].st[0], (long)v[1].st[0], (long)v[3].st[0], acc};
    run(linear_task, &la, N, 16, 2.0 * T * N * Kd);
    ok = 1;
done:
    return finish(v, 4, ok, Py_True);
}

/* ---------------------------------------------------------------- GEMM with fused epilogues */

/* The fused products return True when computed here and False, with every argument
 * validated, when the caller should use BLAS and the separate element-wise kernels (fewer
 * rows than gemm_min_rows, or an empty sum). */

/* gemm_linear(x, w, b, resid, out, act, accumulate): out (+)= x @ w.T + b + resid, and
 * act = gelu(out) when act is given. x (T,K), w (N,K), b (N,), resid, out, act (T,N). */
static PyObject *py_gemm_linear(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 7, "gemm_linear")) return NULL;
    static const char *const names[6] = {"x", "w", "b", "resid", "out", "act"};
    View v[6] = {0};
    int ok = 0;
    int acc = PyObject_IsTrue(args[6]);
    if (acc < 0) return NULL;
    int has_b = args[2] != Py_None, has_r = args[3] != Py_None, has_a = args[5] != Py_None;
    if (view_get(&v[0], args[0], "x", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "w", KIND_F32, 2, 0, 0) ||
        (has_b && view_get(&v[2], args[2], "b", KIND_F32, 1, 0, 0)) ||
        (has_r && view_get(&v[3], args[3], "resid", KIND_F32, 2, 0, 0)) ||
        view_get(&v[4], args[4], "out", KIND_F32, 2, 1, 0) ||
        (has_a && view_get(&v[5], args[5], "act", KIND_F32, 2, 1, 0)))
        goto done;
    long T = v[0].shape[0], Kd = v[0].shape[1], N = v[1].shape[0];
    if (want_dim(&v[1], "w", 1, Kd, "x's features") || (has_b && want_dim(&v[2], "b", 0, N, "w's rows")) ||
        want_dim(&v[4], "out", 0, T, "x's rows") || want_dim(&v[4], "out", 1, N, "w's rows") ||
        (has_r && same_shape(&v[4], "out", &v[3], "resid")) || (has_a && same_shape(&v[4], "out", &v[5], "act")))
        goto done;
    if (views_apart(v, names, 6, 1u << 4 | 1u << 5, NULL)) goto done;
    if (!gemm_takes(T) || Kd == 0) {
        for (int i = 0; i < 6; i++) view_done(&v[i], 0);
        Py_RETURN_FALSE;
    }
    GemmArgs g = {F(v[0]), (long)v[0].st[0], 1, F(v[1]), 1, (long)v[1].st[0], F(v[4]), (long)v[4].st[0],
                  T, N, Kd, 1.0f, acc, has_b ? F(v[2]) : NULL, has_r ? F(v[3]) : NULL, has_r ? (long)v[3].st[0] : 0,
                  has_a ? F(v[5]) : NULL, has_a ? (long)v[5].st[0] : 0, NULL, 0};
    ok = gemm_run(&g) == 0;
done:
    return finish(v, 6, ok, Py_True);
}

/* gemm_dx(dout, w, dx, scale, gelu_x): dx = scale * dout @ w, times gelu'(gelu_x) when given.
 * dout (T,M), w (M,K), dx, gelu_x (T,K). */
static PyObject *py_gemm_dx(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "gemm_dx")) return NULL;
    static const char *const names[4] = {"dout", "w", "dx", "gelu_x"};
    View v[4] = {0};
    int ok = 0;
    double scale = 1.0;
    int has_g = args[4] != Py_None;
    if (view_get(&v[0], args[0], "dout", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "w", KIND_F32, 2, 0, 0) ||
        view_get(&v[2], args[2], "dx", KIND_F32, 2, 1, 0) || get_float(args[3], "scale", &scale) ||
        (has_g && view_get(&v[3], args[4], "gelu_x", KIND_F32, 2, 0, 0)))
        goto done;
    long T = v[0].shape[0], M = v[0].shape[1], Kd = v[1].shape[1];
    if (want_dim(&v[1], "w", 0, M, "dout's features") || want_dim(&v[2], "dx", 0, T, "dout's rows") ||
        want_dim(&v[2], "dx", 1, Kd, "w's columns") || (has_g && same_shape(&v[2], "dx", &v[3], "gelu_x")))
        goto done;
    if (views_apart(v, names, 4, 1u << 2, NULL)) goto done;
    if (!gemm_takes(T) || M == 0) {
        for (int i = 0; i < 4; i++) view_done(&v[i], 0);
        Py_RETURN_FALSE;
    }
    GemmArgs g = {F(v[0]), (long)v[0].st[0], 1, F(v[1]), (long)v[1].st[0], 1, F(v[2]), (long)v[2].st[0],
                  T, Kd, M, (float)scale, 0, NULL, NULL, 0, NULL, 0, has_g ? F(v[3]) : NULL,
                  has_g ? (long)v[3].st[0] : 0};
    ok = gemm_run(&g) == 0;
done:
    return finish(v, 4, ok, Py_True);
}

/* gemm_dw(dout, x, dw, db, scale): dw += scale * dout.T @ x, db += scale * dout summed over
 * rows. dout (T,M), x (T,K), dw (M,K), db (M,) or None. */
static PyObject *py_gemm_dw(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "gemm_dw")) return NULL;
    static const char *const names[4] = {"dout", "x", "dw", "db"};
    View v[4] = {0};
    int ok = 0;
    double scale = 1.0;
    int has_b = args[3] != Py_None;
    if (view_get(&v[0], args[0], "dout", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "x", KIND_F32, 2, 0, 0) ||
        view_get(&v[2], args[2], "dw", KIND_F32, 2, 1, 0) ||
        (has_b && view_get(&v[3], args[3], "db", KIND_F32, 1, 1, 0)) || get_float(args[4], "scale", &scale))
        goto done;
    long T = v[0].shape[0], M = v[0].shape[1], Kd = v[1].shape[1];
    if (want_dim(&v[1], "x", 0, T, "dout's rows") || want_dim(&v[2], "dw", 0, M, "dout's features") ||
        want_dim(&v[2], "dw", 1, Kd, "x's features") || (has_b && want_dim(&v[3], "db", 0, M, "dout's features")))
        goto done;
    if (views_apart(v, names, 4, 1u << 2 | 1u << 3, NULL)) goto done;
    if (!gemm_takes(T) || Kd == 0) {  /* no features: the bias gradient is BLAS-side work too */
        for (int i = 0; i < 4; i++) view_done(&v[i], 0);
        Py_RETURN_FALSE;
    }
    GemmArgs g = {F(v[0]), 1, (long)v[0].st[0], F(v[1]), (long)v[1].st[0], 1, F(v[2]), (long)v[2].st[0],
                  M, Kd, T, (float)scale, 1, NULL, NULL, 0, NULL, 0, NULL, 0, has_b ? F(v[3]) : NULL};
    ok = gemm_run(&g) == 0;
done:
    return finish(v, 4, ok, Py_True);
}

typedef struct {
    const float *x;
    float *out;
    long cols, xs, os;
    int flat;
} RoundCtx;

static void round_task(void *ctx, long a, long b)
{
    const RoundCtx *c = ctx;
    if (c->flat) {
        G->round_bf16(c->x + a, c->out + a, b - a);
        return;
    }
    for (long r = a; r < b; r++) G->round_bf16(c->x + r * c->xs, c->out + r * c->os, c->cols);
}

/* round_bf16(x, out): out = x rounded to BF16 (as float32); out may be x */
static PyObject *py_round_bf16(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 2, "round_bf16")) return NULL;
    static const char *const names[2] = {"x", "out"};
    static const unsigned same_ok[2] = {[1] = 1u << 0};
    View v[2] = {0};
    int ok = 0;
    if (view_get(&v[0], args[0], "x", KIND_F32, -1, 0, 1) || view_get(&v[1], args[1], "out", KIND_F32, -1, 1, 1))
        goto done;
    if (same_shape(&v[0], "x", &v[1], "out") || views_apart(v, names, 2, 1u << 1, same_ok)) goto done;
    long rows = v[1].rows, cols = v[1].cols;
    RoundCtx c = {F(v[0]), F(v[1]), cols, v[0].rs, v[1].rs, v[0].rs == cols && v[1].rs == cols};
    if (c.flat) run(round_task, &c, rows * cols, 4096, 2.0 * rows * cols);
    else run(round_task, &c, rows, 1, 2.0 * rows * cols);
    ok = 1;
done:
    return finish(v, 2, ok, args[1]);
}

/* ---------------------------------------------------------------- attention, KV cache */

static void attn_task(void *ctx, long a, long b) { K->attention((const AttnArgs *)ctx, a, b); }
static void attn_blocked_task(void *ctx, long a, long b) { K->attention_blocked((const AttnArgs *)ctx, a, b); }
static void attn_half_task(void *ctx, long a, long b) { K->attention_half((const AttnArgs *)ctx, a, b); }

/* Query heads an f16-cache attention unit takes together (AttnArgs.hsub): the largest divisor
 * of the group within SM_ATTN_GROUP_MAX heads and SM_ATTN_GROUP_FLOATS floats whose units of
 * the `rows` queries still share out evenly over the threads (a multiple of them, or at least
 * four each): 3 units on 2 threads would leave one thread twice the other's work. Any choice
 * gives the same bits. */
static long attn_hsub(long H, long group, long D, long rows)
{
    long threads = sm_pool_threads();
    for (long g = group < SM_ATTN_GROUP_MAX ? group : SM_ATTN_GROUP_MAX; g > 1; g--) {
        long units = H / g * rows;
        if (group % g == 0 && g * D <= SM_ATTN_GROUP_FLOATS && (units % threads == 0 || units >= 4 * threads))
            return g;
    }
    return 1;
}

static PyObject *py_attention(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 7, "attention")) return NULL;
    static const char *const names[4] = {"q", "k_cache", "v_cache", "out"};
    View v[4] = {0};
    int ok = 0;
    long pos0 = 0, window = 0;
    double scale = 0.0;
    if (view_get(&v[0], args[0], "q", KIND_F32, 3, 0, 0) || view_get(&v[1], args[1], "k_cache", KIND_CACHE, 3, 0, 0) ||
        view_get(&v[2], args[2], "v_cache", KIND_CACHE, 3, 0, 0) || get_long(args[3], "pos0", &pos0) ||
        view_get(&v[3], args[4], "out", KIND_F32, 3, 1, 0) || get_float(args[5], "scale", &scale) ||
        get_long(args[6], "window", &window))
        goto done;
    if (window < 0) { fail("window must be >= 0 (0: no sliding window), got %ld", window); goto done; }
    long T = v[0].shape[0], H = v[0].shape[1], D = v[0].shape[2];
    long Hkv = v[1].shape[0], Smax = v[1].shape[1];
    if (same_shape(&v[1], "k_cache", &v[2], "v_cache") || same_shape(&v[0], "q", &v[3], "out") ||
        want_dim(&v[1], "k_cache", 2, D, "q's head dim"))
        goto done;
    if (v[1].type != v[2].type) { fail("k_cache and v_cache must have the same dtype"); goto done; }
    if (Hkv < 1 || H % Hkv) { fail("q heads (%ld) must be a multiple of the cache's KV heads (%ld)", H, Hkv); goto done; }
    if (pos0 < 0) { fail("pos0 must be >= 0, got %ld", pos0); goto done; }
    if (pos0 > Smax - T) { fail("pos0 + T = %ld + %ld exceeds the cache length %ld", pos0, T, Smax); goto done; }
    if (D > SM_ATTN_MAX_D) { fail("head dim %ld is above the supported %d", D, SM_ATTN_MAX_D); goto done; }
    if (views_apart(v, names, 4, 1u << 3, NULL)) goto done;
    int half = v[1].type == NPY_FLOAT16;
    AttnArgs aa = {F(v[0]), half ? NULL : F(v[1]), half ? NULL : F(v[2]), F(v[3]), T, H, D,
                   Hkv ? H / Hkv : 1, pos0,
                   (long)v[0].st[0], (long)v[0].st[1], (long)v[1].st[0], (long)v[1].st[1],
                   (long)v[2].st[0], (long)v[2].st[1], (long)v[3].st[0], (long)v[3].st[1], (float)scale,
                   window, half ? (const uint16_t *)v[1].data : NULL, half ? (const uint16_t *)v[2].data : NULL};
    if (half) {
        aa.hsub = attn_hsub(H, aa.group, D, T);
        run(attn_half_task, &aa, H / aa.hsub * T, 1, 4.0 * H * T * (pos0 + T) * D);
    } else if (T >= 4 && D <= SM_ATTN_BLOCKED_MAX_D) {
        long nblocks = (T + SM_ATTN_QBLOCK - 1) / SM_ATTN_QBLOCK;
        run(attn_blocked_task, &aa, H * nblocks, 1, 4.0 * H * T * (pos0 + T) * D);
    } else {
        run(attn_task, &aa, H * T, 1, 4.0 * H * T * (pos0 + T) * D);
    }
    ok = 1;
done:
    return finish(v, 4, ok, args[4]);
}

/* k[t], v[t] (Hkv,D) into position p of the caches' layer (3D caches: layer 0, their dims
 * shifted by one); a half cache holds them rounded to nearest even, as ggml's f32 -> f16 copy */
static void kv_store_position(View *k, View *v, long t, View *kc, View *vc, long layer, long p, long Hkv, long D)
{
    int c = kc->nd - 3; /* the caches' head dim */
    for (long h = 0; h < Hkv; h++) {
        const float *ks = F(*k) + t * k->st[0] + h * k->st[1], *vs = F(*v) + t * v->st[0] + h * v->st[1];
        long ko = (c ? layer * kc->st[0] : 0) + h * kc->st[c] + p * kc->st[c + 1];
        long vo = (c ? layer * vc->st[0] : 0) + h * vc->st[c] + p * vc->st[c + 1];
        if (kc->type == NPY_FLOAT16) {
            K->to_half(ks, (uint16_t *)kc->data + ko, D);
            K->to_half(vs, (uint16_t *)vc->data + vo, D);
        } else {
            memcpy(F(*kc) + ko, ks, D * 4);
            memcpy(F(*vc) + vo, vs, D * 4);
        }
    }
}

static PyObject *py_kv_cache_store(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "kv_cache_store")) return NULL;
    static const char *const names[4] = {"k", "v", "k_cache", "v_cache"};
    View v[4] = {0};
    int ok = 0;
    long pos0 = 0;
    if (view_get(&v[0], args[0], "k", KIND_F32, 3, 0, 0) || view_get(&v[1], args[1], "v", KIND_F32, 3, 0, 0) ||
        view_get(&v[2], args[2], "k_cache", KIND_CACHE, 3, 1, 0) ||
        view_get(&v[3], args[3], "v_cache", KIND_CACHE, 3, 1, 0) ||
        get_long(args[4], "pos0", &pos0))
        goto done;
    long T = v[0].shape[0], Hkv = v[0].shape[1], D = v[0].shape[2], Smax = v[2].shape[1];
    if (same_shape(&v[0], "k", &v[1], "v") || same_shape(&v[2], "k_cache", &v[3], "v_cache") ||
        want_dim(&v[2], "k_cache", 0, Hkv, "k's heads") || want_dim(&v[2], "k_cache", 2, D, "k's head dim"))
        goto done;
    if (v[2].type != v[3].type) { fail("k_cache and v_cache must have the same dtype"); goto done; }
    if (pos0 < 0) { fail("pos0 must be >= 0, got %ld", pos0); goto done; }
    if (views_apart(v, names, 4, 1u << 2 | 1u << 3, NULL)) goto done;
    if (pos0 > Smax - T) {
        PyErr_Format(PyExc_IndexError, "KV cache is full: %ld positions from %ld do not fit its length %ld",
                     T, pos0, Smax);
        goto done;
    }
    for (long t = 0; t < T; t++)
        kv_store_position(&v[0], &v[1], t, &v[2], &v[3], 0, pos0 + t, Hkv, D);
    ok = 1;
done:
    return finish(v, 4, ok, Py_None);
}

/* ---------------------------------------------------------------- embeddings */

static long token_at(View *t, long i)
{
    const char *p = t->data + (Py_ssize_t)i * t->st[0] * t->elsize;
    return t->type == NPY_INT64 ? (long)*(const int64_t *)p : (long)*(const int32_t *)p;
}

static int tokens_in_range(View *t, long V)
{
    long n = (long)t->shape[0];
    for (long i = 0; i < n; i++) {
        long id = token_at(t, i);
        if (id < 0 || id >= V) {
            PyErr_Format(PyExc_IndexError, "token id %ld at index %ld is out of range for a vocabulary of %ld",
                         id, i, V);
            return -1;
        }
    }
    return 0;
}

static PyObject *py_embedding(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "embedding")) return NULL;
    static const char *const names[4] = {"tokens", "wte", "wpe", "out"};
    View v[4] = {0};
    int ok = 0;
    long pos0 = 0;
    int has_wpe = args[2] != Py_None;
    if (view_get(&v[0], args[0], "tokens", KIND_INT, 1, 0, 0) || view_get(&v[1], args[1], "wte", KIND_F32, 2, 0, 0) ||
        (has_wpe && view_get(&v[2], args[2], "wpe", KIND_F32, 2, 0, 0)) || get_long(args[3], "pos0", &pos0) ||
        view_get(&v[3], args[4], "out", KIND_F32, 2, 1, 0))
        goto done;
    long T = v[0].shape[0], V = v[1].shape[0], C = v[1].shape[1];
    if (want_dim(&v[3], "out", 0, T, "number of tokens") || want_dim(&v[3], "out", 1, C, "wte's width") ||
        (has_wpe && want_dim(&v[2], "wpe", 1, C, "wte's width")))
        goto done;
    if (pos0 < 0) { fail("pos0 must be >= 0, got %ld", pos0); goto done; }
    if (views_apart(v, names, 4, 1u << 3, NULL)) goto done;
    if (tokens_in_range(&v[0], V)) goto done;
    if (has_wpe && pos0 > (long)v[2].shape[0] - T) {
        PyErr_Format(PyExc_IndexError, "%ld positions from %ld do not fit the position-embedding table (%ld)",
                     T, pos0, (long)v[2].shape[0]);
        goto done;
    }
    for (long t = 0; t < T; t++)
        K->add_rows(F(v[3]) + t * v[3].st[0], F(v[1]) + token_at(&v[0], t) * v[1].st[0],
                    has_wpe ? F(v[2]) + (pos0 + t) * v[2].st[0] : NULL, C);
    ok = 1;
done:
    return finish(v, 4, ok, args[4]);
}

static PyObject *py_embedding_backward(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 3, "embedding_backward")) return NULL;
    static const char *const names[3] = {"tokens", "dout", "dwte"};
    View v[3] = {0};
    int ok = 0;
    if (view_get(&v[0], args[0], "tokens", KIND_INT, 1, 0, 0) || view_get(&v[1], args[1], "dout", KIND_F32, 2, 0, 0) ||
        view_get(&v[2], args[2], "dwte", KIND_F32, 2, 1, 0))
        goto done;
    long N = v[0].shape[0], C = v[2].shape[1];
    if (want_dim(&v[1], "dout", 0, N, "number of tokens") || want_dim(&v[1], "dout", 1, C, "dwte's width") ||
        views_apart(v, names, 3, 1u << 2, NULL) || tokens_in_range(&v[0], (long)v[2].shape[0]))
        goto done;
    for (long i = 0; i < N; i++) {
        float *row = F(v[2]) + token_at(&v[0], i) * v[2].st[0];
        K->add_rows(row, row, F(v[1]) + i * v[1].st[0], C);
    }
    ok = 1;
done:
    return finish(v, 3, ok, args[2]);
}

/* ---------------------------------------------------------------- quantized weights (QTensor) */

static const char *const QNAMES[SM_NQTYPES] = {"F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                                               "Q4_K", "Q5_K", "Q6_K"};
static const long QBLOCK[SM_NQTYPES] = {1, 1, 32, 32, 32, 32, 32, 256, 256, 256};
static const long QBYTES[SM_NQTYPES] = {2, 2, 18, 20, 22, 24, 34, 144, 176, 210};

/* a QTensor's fields, checked: data is uint8, C-contiguous, exactly rows x row bytes */
typedef struct {
    int qtype;
    long rows, cols, wrow;
    View data;   /* only .arr is set: enough for the overlap checks */
    PyObject *ref;
} QView;

static int qview_get(QView *q, PyObject *w, const char *name)
{
    memset(q, 0, sizeof *q);
    PyObject *qt = PyObject_GetAttrString(w, "qtype");
    if (!qt) { PyErr_Clear(); return fail("%s must be a QTensor, got %s", name, Py_TYPE(w)->tp_name); }
    const char *s = PyUnicode_Check(qt) ? PyUnicode_AsUTF8(qt) : NULL;
    q->qtype = -1;
    for (int i = 0; s && i < SM_NQTYPES; i++)
        if (!strcmp(s, QNAMES[i])) q->qtype = i;
    if (q->qtype < 0) {
        PyErr_Clear();
        fail("%s: unknown block format %R", name, qt);
        Py_DECREF(qt);
        return -1;
    }
    Py_DECREF(qt);
    PyObject *shape = PyObject_GetAttrString(w, "shape");
    if (!shape) return -1;
    int good = PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) == 2;
    if (good) {
        q->rows = PyLong_AsLong(PyTuple_GET_ITEM(shape, 0));
        q->cols = PyLong_AsLong(PyTuple_GET_ITEM(shape, 1));
        if (PyErr_Occurred()) { PyErr_Clear(); good = 0; }
    }
    Py_DECREF(shape);
    if (!good || q->rows < 1 || q->cols < 1) return fail("%s: shape must be two positive integers", name);
    long block = QBLOCK[q->qtype];
    if (q->cols % block) return fail("%s: %ld columns is not a whole number of %s blocks of %ld", name, q->cols,
                                     QNAMES[q->qtype], block);
    q->wrow = q->cols / block * QBYTES[q->qtype];
    q->ref = PyObject_GetAttrString(w, "data");
    if (!q->ref) return -1;
    PyArrayObject *d = (PyArrayObject *)q->ref;
    if (!PyArray_Check(q->ref) || PyArray_TYPE(d) != NPY_UINT8 || PyArray_NDIM(d) != 2 ||
        !PyArray_IS_C_CONTIGUOUS(d) || PyArray_DIM(d, 0) != q->rows || PyArray_DIM(d, 1) != q->wrow)
        return fail("%s: data must be C-contiguous uint8 of shape (%ld, %ld) for a %ld x %ld %s tensor", name,
                    q->rows, q->wrow, q->rows, q->cols, QNAMES[q->qtype]);
    q->data.arr = d;
    return 0;
}

static void qview_done(QView *q) { Py_CLEAR(q->ref); }

/* the activations of a product, quantized once per call: a buffer grown, never shrunk, and
 * a private one when another Python thread's product holds it */
static uint8_t *qscratch;
static size_t qscratch_size;
static int qscratch_busy;

static uint8_t *scratch_take(size_t n, int *owned)
{
    *owned = 0;
    if (!qscratch_busy) {
        if (n > qscratch_size) {
            uint8_t *p = realloc(qscratch, n);
            if (!p) return (uint8_t *)PyErr_NoMemory();
            qscratch = p;
            qscratch_size = n;
        }
        qscratch_busy = 1;
        return qscratch;
    }
    uint8_t *p = malloc(n ? n : 1);
    if (!p) return (uint8_t *)PyErr_NoMemory();
    *owned = 1;
    return p;
}

static void scratch_give(uint8_t *p, int owned)
{
    if (owned) free(p);
    else qscratch_busy = 0;
}

typedef struct {
    int qtype;
    const float *x;
    long xs, K, xrow;
    uint8_t *dst;
} QuantizeCtx;

static void quantize_task(void *ctx, long t0, long t1)
{
    const QuantizeCtx *c = ctx;
    for (long t = t0; t < t1; t++) Q->quantize_row(c->qtype, c->x + t * c->xs, c->dst + t * c->xrow, c->K);
}

static void qlinear_task(void *ctx, long a, long b) { Q->linear_rows((const QLinearArgs *)ctx, a, b); }

/* quant_linear(x, w, b, out, accumulate): out (+)= x @ w.T + b for a QTensor w */
static PyObject *py_quant_linear(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "quant_linear")) return NULL;
    View v[3] = {0};
    QView q = {0};
    int ok = 0;
    int acc = PyObject_IsTrue(args[4]);
    if (acc < 0) return NULL;
    int has_b = args[2] != Py_None;
    if (qview_get(&q, args[1], "w") || view_get(&v[0], args[0], "x", KIND_F32, 2, 0, 0) ||
        (has_b && view_get(&v[1], args[2], "b", KIND_F32, 1, 0, 0)) ||
        view_get(&v[2], args[3], "out", KIND_F32, 2, 1, 0))
        goto done;
    long T = v[0].shape[0], Kd = v[0].shape[1], N = q.rows;
    if (Kd != q.cols) { fail("x has %ld features but w takes %ld", Kd, q.cols); goto done; }
    if ((has_b && want_dim(&v[1], "b", 0, N, "w's rows")) || want_dim(&v[2], "out", 0, T, "x's rows") ||
        want_dim(&v[2], "out", 1, N, "w's rows"))
        goto done;
    if (no_overlap(&v[2], "out", &v[0], "x", 0) || no_overlap(&v[2], "out", &q.data, "w's data", 0) ||
        (has_b && no_overlap(&v[2], "out", &v[1], "b", 0)))
        goto done;
    if (T > 0) {
        long xrow = sm_act_row_bytes(q.qtype, Kd);
        int owned;
        uint8_t *xq = scratch_take((size_t)T * (size_t)xrow, &owned);
        if (!xq) goto done;
        QuantizeCtx qc = {q.qtype, F(v[0]), (long)v[0].st[0], Kd, xrow, xq};
        run(quantize_task, &qc, T, 1, 8.0 * T * Kd);
        QLinearArgs la = {q.qtype, PyArray_DATA(q.data.arr), q.wrow, xq, xrow, has_b ? F(v[1]) : NULL,
                          F(v[2]), (long)v[2].st[0], T, Kd, N, acc};
        run(qlinear_task, &la, N, Q->row_grain, 2.0 * T * N * Kd);
        scratch_give(xq, owned);
    }
    ok = 1;
done:
    qview_done(&q);
    return finish(v, 3, ok, args[3]);
}

typedef struct {
    int qtype;
    const uint8_t *w;
    long wrow, cols, os;
    float *out;
} DequantCtx;

static void dequant_task(void *ctx, long r0, long r1)
{
    const DequantCtx *c = ctx;
    for (long r = r0; r < r1; r++) Q->dequant_row(c->qtype, c->w + r * c->wrow, c->out + r * c->os, c->cols);
}

/* quant_dequantize(w, out): out (rows, cols) float32 = the values w holds */
static PyObject *py_quant_dequantize(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 2, "quant_dequantize")) return NULL;
    View v[1] = {0};
    QView q = {0};
    int ok = 0;
    if (qview_get(&q, args[0], "w") || view_get(&v[0], args[1], "out", KIND_F32, 2, 1, 0)) goto done;
    if (want_dim(&v[0], "out", 0, q.rows, "w's rows") || want_dim(&v[0], "out", 1, q.cols, "w's columns") ||
        no_overlap(&v[0], "out", &q.data, "w's data", 0))
        goto done;
    DequantCtx c = {q.qtype, PyArray_DATA(q.data.arr), q.wrow, q.cols, (long)v[0].st[0], F(v[0])};
    run(dequant_task, &c, q.rows, 1, 4.0 * q.rows * q.cols);
    ok = 1;
done:
    qview_done(&q);
    return finish(v, 1, ok, args[1]);
}

/* quant_embedding(tokens, w, wpe, pos0, out): out[t] = w[tok[t]] (+ wpe[pos0 + t]) */
static PyObject *py_quant_embedding(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "quant_embedding")) return NULL;
    View v[3] = {0};
    QView q = {0};
    int ok = 0;
    long pos0 = 0;
    int has_wpe = args[2] != Py_None;
    if (view_get(&v[0], args[0], "tokens", KIND_INT, 1, 0, 0) || qview_get(&q, args[1], "w") ||
        (has_wpe && view_get(&v[1], args[2], "wpe", KIND_F32, 2, 0, 0)) || get_long(args[3], "pos0", &pos0) ||
        view_get(&v[2], args[4], "out", KIND_F32, 2, 1, 0))
        goto done;
    long T = v[0].shape[0], C = q.cols;
    if (want_dim(&v[2], "out", 0, T, "number of tokens") || want_dim(&v[2], "out", 1, C, "w's width") ||
        (has_wpe && want_dim(&v[1], "wpe", 1, C, "w's width")))
        goto done;
    if (pos0 < 0) { fail("pos0 must be >= 0, got %ld", pos0); goto done; }
    if (no_overlap(&v[2], "out", &q.data, "w's data", 0) || no_overlap(&v[2], "out", &v[0], "tokens", 0) ||
        (has_wpe && no_overlap(&v[2], "out", &v[1], "wpe", 0)))
        goto done;
    if (tokens_in_range(&v[0], q.rows)) goto done;
    if (has_wpe && pos0 > (long)v[1].shape[0] - T) {
        PyErr_Format(PyExc_IndexError, "%ld positions from %ld do not fit the position-embedding table (%ld)",
                     T, pos0, (long)v[1].shape[0]);
        goto done;
    }
    const uint8_t *w = PyArray_DATA(q.data.arr);
    for (long t = 0; t < T; t++) {
        float *o = F(v[2]) + t * v[2].st[0];
        Q->dequant_row(q.qtype, w + token_at(&v[0], t) * q.wrow, o, C);
        if (has_wpe) K->add_rows(o, o, F(v[1]) + (pos0 + t) * v[1].st[0], C);
    }
    ok = 1;
done:
    qview_done(&q);
    return finish(v, 3, ok, args[4]);
}

/* ---------------------------------------------------------------- norms */

static void ln_task(void *ctx, long a, long b) { K->layer_norm_rows((const NormArgs *)ctx, a, b); }
static void rms_task(void *ctx, long a, long b) { K->rms_norm_rows((const NormArgs *)ctx, a, b); }

static PyObject *py_layer_norm(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 7, "layer_norm")) return NULL;
    static const char *const names[6] = {"x", "weight", "bias", "out", "mean", "rstd"};
    static const unsigned same_ok[6] = {[3] = 1u << 0};  /* out may be x */
    View v[6] = {0};
    int ok = 0;
    double eps = 0.0;
    int has_m = args[5] != Py_None, has_r = args[6] != Py_None;
    if (view_get(&v[0], args[0], "x", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "weight", KIND_F32, 1, 0, 0) ||
        view_get(&v[2], args[2], "bias", KIND_F32, 1, 0, 0) || view_get(&v[3], args[3], "out", KIND_F32, 2, 1, 0) ||
        get_float(args[4], "eps", &eps) || (has_m && view_get(&v[4], args[5], "mean", KIND_F32, 1, 1, 0)) ||
        (has_r && view_get(&v[5], args[6], "rstd", KIND_F32, 1, 1, 0)))
        goto done;
    long T = v[0].shape[0], C = v[0].shape[1];
    if (same_shape(&v[0], "x", &v[3], "out") || want_dim(&v[1], "weight", 0, C, "x's features") ||
        want_dim(&v[2], "bias", 0, C, "x's features") || (has_m && want_dim(&v[4], "mean", 0, T, "x's rows")) ||
        (has_r && want_dim(&v[5], "rstd", 0, T, "x's rows")))
        goto done;
    if (views_apart(v, names, 6, 1u << 3 | 1u << 4 | 1u << 5, same_ok)) goto done;
    NormArgs na = {F(v[0]), F(v[1]), F(v[2]), F(v[3]), has_m ? F(v[4]) : NULL, has_r ? F(v[5]) : NULL,
                   C, (long)v[0].st[0], (long)v[3].st[0], has_m ? (long)v[4].st[0] : 0,
                   has_r ? (long)v[5].st[0] : 0, (float)eps};
    run(ln_task, &na, T, 1, 8.0 * T * C);
    ok = 1;
done:
    return finish(v, 6, ok, args[3]);
}

static PyObject *py_rms_norm(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 4, "rms_norm")) return NULL;
    static const char *const names[3] = {"x", "weight", "out"};
    static const unsigned same_ok[3] = {[2] = 1u << 0};  /* out may be x */
    View v[3] = {0};
    int ok = 0;
    double eps = 0.0;
    if (view_get(&v[0], args[0], "x", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "weight", KIND_F32, 1, 0, 0) ||
        view_get(&v[2], args[2], "out", KIND_F32, 2, 1, 0) || get_float(args[3], "eps", &eps))
        goto done;
    long T = v[0].shape[0], C = v[0].shape[1];
    if (same_shape(&v[0], "x", &v[2], "out") || want_dim(&v[1], "weight", 0, C, "x's features") ||
        views_apart(v, names, 3, 1u << 2, same_ok))
        goto done;
    NormArgs na = {F(v[0]), F(v[1]), NULL, F(v[2]), NULL, NULL, C, (long)v[0].st[0], (long)v[2].st[0], 0, 0, (float)eps};
    run(rms_task, &na, T, 1, 6.0 * T * C);
    ok = 1;
done:
    return finish(v, 3, ok, args[2]);
}

/* LayerNorm's backward runs over blocks of rows fixed by T alone (at most SM_LNB_BLOCKS), each
 * leaving its parameter-gradient sums in a slot of `part`, added in block order afterwards: the
 * same bits whatever the thread count, and one pass over dout and x */
#define SM_LNB_BLOCKS 64
#define SM_LNB_MIN_ROWS 32

typedef struct {
    const NormBwdArgs *a;
    long rows;   /* per block */
    float *part; /* blocks x (dw, db) x C */
} LnbJob;

static void lnb_task(void *ctx, long b0, long b1)
{
    const LnbJob *j = ctx;
    const long C = j->a->C;
    for (long b = b0; b < b1; b++) {
        long r0 = b * j->rows, r1 = r0 + j->rows < j->a->T ? r0 + j->rows : j->a->T;
        K->layer_norm_bwd_block(j->a, r0, r1, j->part + 2 * b * C, j->part + (2 * b + 1) * C);
    }
}

static PyObject *py_layer_norm_backward(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 8, "layer_norm_backward")) return NULL;
    View v[8] = {0};
    int ok = 0;
    static const char *names[8] = {"dout", "x", "weight", "mean", "rstd", "dx", "dweight", "dbias"};
    static const int nds[8] = {2, 2, 1, 1, 1, 2, 1, 1};
    for (int i = 0; i < 8; i++)
        if (view_get(&v[i], args[i], names[i], KIND_F32, nds[i], i >= 5, 0)) goto done;
    long T = v[1].shape[0], C = v[1].shape[1];
    if (same_shape(&v[1], "x", &v[0], "dout") || same_shape(&v[1], "x", &v[5], "dx") ||
        want_dim(&v[2], "weight", 0, C, "x's features") || want_dim(&v[3], "mean", 0, T, "x's rows") ||
        want_dim(&v[4], "rstd", 0, T, "x's rows") || want_dim(&v[6], "dweight", 0, C, "x's features") ||
        want_dim(&v[7], "dbias", 0, C, "x's features"))
        goto done;
    /* dx may be dout or x itself (each element is read before it is written); the
     * parameter gradients must not touch anything else */
    static const unsigned same_ok[8] = {[5] = 1u << 0 | 1u << 1};
    if (views_apart(v, names, 8, 1u << 5 | 1u << 6 | 1u << 7, same_ok)) goto done;
    NormBwdArgs a = {F(v[0]), F(v[1]), F(v[2]), F(v[3]), F(v[4]), F(v[5]), F(v[6]), F(v[7]), T, C,
                     (long)v[0].st[0], (long)v[1].st[0], (long)v[5].st[0], (long)v[3].st[0], (long)v[4].st[0]};
    long rows = (T + SM_LNB_BLOCKS - 1) / SM_LNB_BLOCKS;
    if (rows < SM_LNB_MIN_ROWS) rows = SM_LNB_MIN_ROWS;
    long blocks = (T + rows - 1) / rows;
    LnbJob job = {&a, rows, malloc((size_t)(blocks > 0 ? blocks : 1) * 2 * C * sizeof(float) + 1)};
    if (!job.part) {
        PyErr_NoMemory();
        goto done;
    }
    run(lnb_task, &job, blocks, 1, 14.0 * T * C);
    for (long b = 0; b < blocks; b++) {
        const float *pdw = job.part + 2 * b * C, *pdb = pdw + C;
        float *dw = F(v[6]), *db = F(v[7]);
        for (long c = 0; c < C; c++) {
            dw[c] += pdw[c];
            db[c] += pdb[c];
        }
    }
    free(job.part);
    ok = 1;
done:
    return finish(v, 8, ok, args[5]);
}

/* ---------------------------------------------------------------- elementwise */

typedef struct {
    int op, flat;
    const float *a, *b;
    float *out;
    long cols, ars, brs, ors;
} EltCtx;

static void elt_task(void *ctx, long i0, long i1)
{
    const EltCtx *c = ctx;
    if (c->flat) {
        K->elementwise(c->op, c->a + i0, c->b ? c->b + i0 : NULL, c->out + i0, i1 - i0);
        return;
    }
    for (long r = i0; r < i1; r++)
        K->elementwise(c->op, c->a + r * c->ars, c->b ? c->b + r * c->brs : NULL, c->out + r * c->ors, c->cols);
}

/* out = op(a[, b]) over arrays of one shape; out may be a or b itself */
static PyObject *elementwise(int op, PyObject *const *args, Py_ssize_t n, int nin, const char *fn,
                             const char *an, const char *bn, double cost)
{
    if (nargs_ok(n, nin + 1, fn)) return NULL;
    View v[3] = {0};
    int ok = 0;
    View *out = &v[nin];
    const char *names[3] = {an, nin == 2 ? bn : "out", "out"};
    unsigned same_ok[3] = {0};
    same_ok[nin] = (1u << nin) - 1;  /* out may be any input itself */
    if (view_get(&v[0], args[0], an, KIND_F32, -1, 0, 1) ||
        (nin == 2 && view_get(&v[1], args[1], bn, KIND_F32, -1, 0, 1)) ||
        view_get(out, args[nin], "out", KIND_F32, -1, 1, 1))
        goto done;
    if (same_shape(&v[0], an, out, "out") || (nin == 2 && same_shape(&v[0], an, &v[1], bn)) ||
        views_apart(v, names, nin + 1, 1u << nin, same_ok))
        goto done;
    long rows = out->rows, cols = out->cols;
    int flat = v[0].rs == cols && out->rs == cols && (nin == 1 || v[1].rs == cols);
    EltCtx c = {op, flat, F(v[0]), nin == 2 ? F(v[1]) : NULL, F(*out), cols,
                v[0].rs, nin == 2 ? v[1].rs : 0, out->rs};
    if (flat) run(elt_task, &c, rows * cols, 1024, cost * rows * cols);
    else run(elt_task, &c, rows, 1, cost * rows * cols);
    ok = 1;
done:
    return finish(v, nin + 1, ok, args[nin]);
}

static PyObject *py_gelu(PyObject *s, PyObject *const *a, Py_ssize_t n) { return elementwise(SM_GELU, a, n, 1, "gelu", "x", NULL, 20); }
static PyObject *py_silu(PyObject *s, PyObject *const *a, Py_ssize_t n) { return elementwise(SM_SILU, a, n, 1, "silu", "x", NULL, 20); }
static PyObject *py_gelu_backward(PyObject *s, PyObject *const *a, Py_ssize_t n) { return elementwise(SM_GELU_BWD, a, n, 2, "gelu_backward", "x", "dout", 30); }
static PyObject *py_swiglu(PyObject *s, PyObject *const *a, Py_ssize_t n) { return elementwise(SM_SWIGLU, a, n, 2, "swiglu", "gate", "up", 20); }
static PyObject *py_geglu(PyObject *s, PyObject *const *a, Py_ssize_t n) { return elementwise(SM_GEGLU, a, n, 2, "geglu", "gate", "up", 20); }

/* ---------------------------------------------------------------- softmax */

static void softmax_task(void *ctx, long a, long b) { K->softmax_rows((const SoftmaxArgs *)ctx, a, b); }

/* softmax(x, out): row-wise over the last dim; out may be x itself */
static PyObject *py_softmax(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 2, "softmax")) return NULL;
    static const char *const names[2] = {"x", "out"};
    static const unsigned same_ok[2] = {[1] = 1u << 0};  /* out may be the input */
    View v[2] = {0};
    int ok = 0;
    if (view_get(&v[0], args[0], "x", KIND_F32, -2, 0, 1) || view_get(&v[1], args[1], "out", KIND_F32, -2, 1, 1))
        goto done;
    if (same_shape(&v[0], "x", &v[1], "out") || views_apart(v, names, 2, 1u << 1, same_ok)) goto done;
    SoftmaxArgs sa = {F(v[0]), F(v[1]), v[0].cols, v[0].rs, v[1].rs};
    run(softmax_task, &sa, v[0].rows, 1, 20.0 * v[0].rows * v[0].cols);
    ok = 1;
done:
    return finish(v, 2, ok, args[1]);
}

/* ---------------------------------------------------------------- rope */

static void rope_task(void *ctx, long a, long b) { K->rope_rows((const RopeArgs *)ctx, a, b); }

/* what rope and rope_rows both need of x (T,H,D), out, freq_factors (D/2,) or absent, theta */
static int rope_args_ok(View *v, int has_ff, double theta, PyObject *theta_obj)
{
    long D = v[0].shape[2];
    if (same_shape(&v[0], "x", &v[1], "out")) return -1;
    if (D % 2) return fail("rope needs an even head dim, got %ld", D);
    if (D / 2 > SM_ROPE_MAX_HALF) return fail("head dim %ld is above the supported %d", D, 2 * SM_ROPE_MAX_HALF);
    if (!(theta > 0.0)) return fail("theta must be positive, got %S", theta_obj);
    if (has_ff) {
        if (want_dim(&v[2], "freq_factors", 0, D / 2, "half the head dim")) return -1;
        const float *ff = F(v[2]);  /* a unit-stride view (view_get copies otherwise) */
        for (long i = 0; i < D / 2; i++)
            if (!(ff[i] > 0.0f) || ff[i] == INFINITY) return fail("freq_factors[%ld] must be positive and finite", i);
    }
    return 0;
}

/* The angles' cos and sin of the last few calls, by (theta, freq_factors, half, positions):
 * every layer of a forward turns its queries and keys at the same positions with one of a
 * model's one or two bases, so a forward computes each table once instead of twice a layer
 * (a 262k-vocabulary Gemma 3 decode batch of 8 spent 3% of its step in cos and sin).
 * Entries are read and written with the GIL held; one in use by a call that let go of the
 * GIL is `busy` and never overwritten meanwhile. */
#define SM_ROPE_TABLES 4
#define SM_ROPE_TABLE_ROWS 64

typedef struct {
    int filled, has_ff, busy;
    double theta;
    long half, T;
    unsigned long stamp;
    float ff[SM_ROPE_MAX_HALF];
    int64_t pos[SM_ROPE_TABLE_ROWS];
    float *table;   /* (2,T,half): cos, then sin */
    long capacity;  /* floats */
} RopeTable;

static RopeTable rope_tables[SM_ROPE_TABLES];
static unsigned long rope_clock;

static int64_t rope_row_position(const RopeArgs *a, long t)
{
    if (!a->positions) return (int64_t)a->pos0 + t;
    return a->positions_64 ? ((const int64_t *)a->positions)[t * a->ps] : ((const int32_t *)a->positions)[t * a->ps];
}

static int rope_table_is(const RopeTable *e, const RopeArgs *a)
{
    if (!e->filled || e->theta != a->theta || e->half != a->half || e->T != a->T ||
        e->has_ff != (a->freq_factors != NULL))
        return 0;
    if (a->freq_factors && memcmp(e->ff, a->freq_factors, (size_t)a->half * sizeof(float))) return 0;
    for (long t = 0; t < a->T; t++)
        if (e->pos[t] != rope_row_position(a, t)) return 0;
    return 1;
}

/* a->table set to the table of a's angles, found or made (NULL when a has too many rows or
 * no entry is free: the kernel then computes them per row); returns the entry to release */
static RopeTable *rope_table_take(RopeArgs *a)
{
    a->table = NULL;
    if (a->T < 1 || a->T > SM_ROPE_TABLE_ROWS) return NULL;
    RopeTable *e = NULL, *victim = NULL;
    for (int i = 0; i < SM_ROPE_TABLES && !e; i++) {
        RopeTable *c = &rope_tables[i];
        if (rope_table_is(c, a)) e = c;
        else if (!c->busy && (!victim || !c->filled || (victim->filled && c->stamp < victim->stamp))) victim = c;
    }
    if (!e) {
        if (!victim) return NULL;
        e = victim;
        long need = 2 * a->T * a->half;
        if (need > e->capacity) {
            float *p = PyMem_Realloc(e->table, (size_t)need * sizeof(float));
            if (!p) return NULL;
            e->table = p;
            e->capacity = need;
        }
        double inv[SM_ROPE_MAX_HALF];
        sm_rope_inverse_frequencies(a->theta, a->freq_factors, a->half, inv);
        for (long t = 0; t < a->T; t++) {
            e->pos[t] = rope_row_position(a, t);
            sm_rope_angles((double)e->pos[t], inv, a->half, e->table + t * a->half, e->table + (a->T + t) * a->half);
        }
        e->theta = a->theta;
        e->half = a->half;
        e->T = a->T;
        e->has_ff = a->freq_factors != NULL;
        if (e->has_ff) memcpy(e->ff, a->freq_factors, (size_t)a->half * sizeof(float));
        e->filled = 1;
    }
    e->stamp = ++rope_clock;
    e->busy++;
    a->table = e->table;
    return e;
}

static void rope_table_give(RopeTable *e)
{
    if (e) e->busy--;
}

static PyObject *py_rope(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 6, "rope")) return NULL;
    static const char *const names[3] = {"x", "out", "freq_factors"};
    static const unsigned same_ok[3] = {[1] = 1u << 0};  /* out may be x */
    View v[3] = {0};
    int ok = 0, has_ff = args[5] != Py_None;
    long pos0 = 0;
    double theta = 0.0;
    int neox = PyObject_IsTrue(args[4]);
    if (neox < 0) return NULL;
    if (view_get(&v[0], args[0], "x", KIND_F32, 3, 0, 0) || get_long(args[1], "pos0", &pos0) ||
        get_float(args[2], "theta", &theta) || view_get(&v[1], args[3], "out", KIND_F32, 3, 1, 0) ||
        (has_ff && view_get(&v[2], args[5], "freq_factors", KIND_F32, 1, 0, 0)))
        goto done;
    long T = v[0].shape[0], H = v[0].shape[1], D = v[0].shape[2];
    if (rope_args_ok(v, has_ff, theta, args[2]) || views_apart(v, names, 3, 1u << 1, same_ok)) goto done;
    if (pos0 < 0) { fail("pos0 must be >= 0, got %ld", pos0); goto done; }
    RopeArgs ra = {F(v[0]), F(v[1]), T, H, D / 2, pos0, (long)v[0].st[0], (long)v[0].st[1],
                   (long)v[1].st[0], (long)v[1].st[1], theta, neox, has_ff ? F(v[2]) : NULL};
    RopeTable *table = rope_table_take(&ra);
    run(rope_task, &ra, T, 1, 6.0 * T * H * D + 100.0 * T * D);
    rope_table_give(table);
    ok = 1;
done:
    return finish(v, 3, ok, args[3]);
}

/* ---------------------------------------------------------------- rows: a decode batch's rows, each at
 * its own position in its own KV cache (one call per layer instead of one per row) */

/* "k_caches[b]" for i = b < B, "v_caches[b]" for i = B + b, into buf (32 bytes): made for every
 * cache of every call, so without snprintf */
static const char *cache_name(char *buf, long i, long B)
{
    char digits[24];
    int n = 0;
    long b = i % B;
    memcpy(buf, i < B ? "k_caches[" : "v_caches[", 9);
    do { digits[n++] = (char)('0' + b % 10); b /= 10; } while (b);
    char *p = buf + 9;
    while (n) *p++ = digits[--n];
    p[0] = ']';
    p[1] = 0;
    return buf;
}

/* the byte ranges a and b span are disjoint (so they share no memory) */
static int extents_apart(PyArrayObject *a, PyArrayObject *b)
{
    char *alo, *ahi, *blo, *bhi;
    extent(a, &alo, &ahi);
    extent(b, &blo, &bhi);
    return alo == ahi || blo == bhi || ahi <= blo || bhi <= alo;
}

/* positions (B,): one per row, each >= 0 */
static int positions_ok(View *p, long B)
{
    if (want_dim(p, "positions", 0, B, "one per row")) return -1;
    for (long b = 0; b < B; b++)
        if (token_at(p, b) < 0) return fail("positions[%ld] must be >= 0, got %ld", b, token_at(p, b));
    return 0;
}

/* rope_rows(x, positions, theta, out, neox, freq_factors): rope with row t at positions[t] */
static PyObject *py_rope_rows(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 6, "rope_rows")) return NULL;
    static const char *const names[4] = {"x", "out", "freq_factors", "positions"};
    static const unsigned same_ok[4] = {[1] = 1u << 0};  /* out may be x */
    View v[4] = {0};
    int ok = 0, has_ff = args[5] != Py_None;
    double theta = 0.0;
    int neox = PyObject_IsTrue(args[4]);
    if (neox < 0) return NULL;
    if (view_get(&v[0], args[0], "x", KIND_F32, 3, 0, 0) ||
        view_get(&v[3], args[1], "positions", KIND_INT, 1, 0, 0) || get_float(args[2], "theta", &theta) ||
        view_get(&v[1], args[3], "out", KIND_F32, 3, 1, 0) ||
        (has_ff && view_get(&v[2], args[5], "freq_factors", KIND_F32, 1, 0, 0)))
        goto done;
    long T = v[0].shape[0], H = v[0].shape[1], D = v[0].shape[2];
    if (rope_args_ok(v, has_ff, theta, args[2]) || views_apart(v, names, 4, 1u << 1, same_ok) ||
        positions_ok(&v[3], T))
        goto done;
    RopeArgs ra = {F(v[0]), F(v[1]), T, H, D / 2, 0, (long)v[0].st[0], (long)v[0].st[1],
                   (long)v[1].st[0], (long)v[1].st[1], theta, neox, has_ff ? F(v[2]) : NULL,
                   v[3].data, v[3].type == NPY_INT64, (long)v[3].st[0]};
    /* the GIL kept or let go of as for one row: a decode batch's rows kernels keep it when the
     * per-row calls they replace did, since in a server the engine thread that lets go of it
     * waits to get it back behind the HTTP threads */
    RopeTable *table = rope_table_take(&ra);
    run_gil(rope_task, &ra, T, 1, 6.0 * T * H * D + 100.0 * T * D, 6.0 * H * D + 100.0 * D);
    rope_table_give(table);
    ok = 1;
done:
    return finish(v, 4, ok, args[3]);
}

/* The caches of B rows: the sequences ko, vo of B arrays (n_layers, Hkv, S_max, D) into kv[b]
 * (keys) and kv[B + b] (values): row b's pair of one shape, all of one dtype, head dim D,
 * layer and positions[b] inside them, and heads (written: exactly; read: a multiple of)
 * their Hkv. Written caches must be usable in place: a copy would be written back over the
 * other rows' slots when two rows share a cache. */
static int caches_get(View *kv, PyObject *const *seqs, long B, long layer, View *pos, long heads, long D,
                      int written)
{
    char name[2][32];
    for (int s = 0; s < 2; s++)
        if (PySequence_Fast_GET_SIZE(seqs[s]) != B)
            return fail("%s must hold one cache per row (%ld), got %zd", s ? "v_caches" : "k_caches", B,
                        PySequence_Fast_GET_SIZE(seqs[s]));
    for (long b = 0; b < B; b++) {
        for (int s = 0; s < 2; s++) {
            View *c = &kv[s * B + b];
            cache_name(name[s], s * B + b, B);
            if (view_get(c, PySequence_Fast_GET_ITEM(seqs[s], b), name[s], KIND_CACHE, 4, written, 0)) return -1;
            if (written && c->tmp)
                return fail("%s must be an aligned array with a unit-stride last dim (it is written in place)",
                            name[s]);
        }
        View *k = &kv[b];
        long Hkv = (long)k->shape[1], S = (long)k->shape[2], p = token_at(pos, b);
        if (same_shape(k, name[0], &kv[B + b], name[1]) || want_dim(k, name[0], 3, D, "the head dim")) return -1;
        if (k->type != kv[0].type || kv[B + b].type != kv[0].type)
            return fail("every cache must have the same dtype; %s or %s differs from k_caches[0]", name[0], name[1]);
        if (layer >= (long)k->shape[0]) return fail("layer %ld is outside %s's %ld layers", layer, name[0], (long)k->shape[0]);
        if (written ? Hkv != heads : Hkv < 1 || heads % Hkv)
            return fail("%s has %ld KV heads; the rows have %ld heads, which must be %s", name[0], Hkv, heads,
                        written ? "the same" : "a multiple of them");
        if (p >= S) return fail("positions[%ld] = %ld is beyond %s's length %ld", b, p, name[0], S);
    }
    return 0;
}

/* seqs[0], seqs[1]: k_caches and v_caches as fast sequences (new references) */
static int caches_sequences(PyObject **seqs, PyObject *ko, PyObject *vo)
{
    if (!PyList_Check(ko) && !PyTuple_Check(ko)) return fail("k_caches must be a list or tuple of arrays");
    if (!PyList_Check(vo) && !PyTuple_Check(vo)) return fail("v_caches must be a list or tuple of arrays");
    seqs[0] = PySequence_Fast(ko, "k_caches");
    seqs[1] = PySequence_Fast(vo, "v_caches");
    if (seqs[0] && seqs[1]) return 0;
    Py_CLEAR(seqs[0]);
    Py_CLEAR(seqs[1]);
    return -1;
}

/* drop caches_get's views (their copies, made only of read caches, need no write back) */
static void caches_release(View *kv, long n)
{
    if (!kv) return;
    for (long i = 0; i < n; i++) view_done(&kv[i], 0);
    PyMem_Free(kv);
}

/* kv_cache_store_rows(k, v, k_caches, v_caches, layer, positions): for each row b,
 * k_caches[b][layer][:, positions[b]] = k[b] (v alike); no two rows may write one slot */
static PyObject *py_kv_cache_store_rows(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 6, "kv_cache_store_rows")) return NULL;
    PyObject *seqs[2] = {NULL, NULL};
    if (caches_sequences(seqs, args[2], args[3])) return NULL;
    View io[3] = {0};  /* k, v, positions */
    View *kv = NULL;
    char **ext = NULL;
    long B = 0, layer = 0;
    int ok = 0;
    if (view_get(&io[0], args[0], "k", KIND_F32, 3, 0, 0) || view_get(&io[1], args[1], "v", KIND_F32, 3, 0, 0) ||
        get_long(args[4], "layer", &layer) || view_get(&io[2], args[5], "positions", KIND_INT, 1, 0, 0))
        goto done;
    B = io[0].shape[0];
    long Hkv = io[0].shape[1], D = io[0].shape[2];
    if (same_shape(&io[0], "k", &io[1], "v") || positions_ok(&io[2], B)) goto done;
    if (layer < 0) { fail("layer must be >= 0, got %ld", layer); goto done; }
    /* the caches' views and, after them in the same block, their extents (one allocation) */
    kv = PyMem_Calloc(1, (2 * B + 1) * sizeof(View) + (4 * B + 2) * sizeof(char *));
    if (!kv) { PyErr_NoMemory(); goto done; }
    ext = (char **)(kv + 2 * B + 1);
    if (caches_get(kv, seqs, B, layer, &io[2], Hkv, D, 1)) goto done;
    static const char *const in_names[3] = {"k", "v", "positions"};
    char on[32], in[32];
    /* each array's byte extent once (a cache's at ext[2i], ext[2i+1], k's, v's and positions'
     * after them): the pairs below compare extents, and only overlapping ones are looked at */
    char *ioext[6];
    for (long i = 0; i < 2 * B; i++) extent(kv[i].arr, &ext[2 * i], &ext[2 * i + 1]);
    for (int j = 0; j < 3; j++) extent(io[j].arr, &ioext[2 * j], &ioext[2 * j + 1]);
#define SM_APART(alo, ahi, blo, bhi) ((alo) == (ahi) || (blo) == (bhi) || (ahi) <= (blo) || (bhi) <= (alo))
    for (long i = 0; i < 2 * B; i++) {
        char *alo = ext[2 * i], *ahi = ext[2 * i + 1];
        for (int j = 0; j < 3; j++) {
            if (SM_APART(alo, ahi, ioext[2 * j], ioext[2 * j + 1])) continue;
            cache_name(on, i, B);
            if (no_overlap(&kv[i], on, &io[j], in_names[j], 0)) goto done;
        }
        for (long j = i + 1; j < 2 * B; j++) {
            if (SM_APART(alo, ahi, ext[2 * j], ext[2 * j + 1])) continue;  /* the usual case */
            cache_name(on, i, B);
            cache_name(in, j, B);
            if (no_overlap(&kv[i], on, &kv[j], in, 1)) goto done;
            if (same_array(kv[i].arr, kv[j].arr) && token_at(&io[2], i % B) == token_at(&io[2], j % B)) {
                fail("%s and %s are one array, written at the same position %ld", on, in, token_at(&io[2], i % B));
                goto done;
            }
        }
    }
#undef SM_APART
    for (long b = 0; b < B; b++)
        kv_store_position(&io[0], &io[1], b, &kv[b], &kv[B + b], layer, token_at(&io[2], b), Hkv, D);
    ok = 1;
done:
    caches_release(kv, 2 * B);
    Py_DECREF(seqs[0]);
    Py_DECREF(seqs[1]);
    return finish(io, 3, ok, Py_None);
}

/* One (row, unit) per i = b*H + u (a unit: a head, or over a half cache hsub heads): row b's
 * attention, a one-query call of the kernel that attention() runs for that cache, so each
 * row's result is attention()'s bit for bit. */
typedef struct {
    const AttnArgs *rows;
    long H;  /* units per row */
    int half;
} AttnRowsArgs;

static void attn_rows_task(void *ctx, long i0, long i1)
{
    const AttnRowsArgs *r = ctx;
    void (*fn)(const AttnArgs *, long, long) = r->half ? K->attention_half : K->attention;
    for (long i = i0; i < i1;) {
        long b = i / r->H, h1 = i1 - b * r->H < r->H ? i1 - b * r->H : r->H;
        fn(&r->rows[b], i - b * r->H, h1);
        i = b * r->H + h1;
    }
}

/* attention_rows(q, k_caches, v_caches, layer, positions, out, scale, window): row b's
 * query attends to its own caches' layer up to positions[b] */
static PyObject *py_attention_rows(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 8, "attention_rows")) return NULL;
    PyObject *seqs[2] = {NULL, NULL};
    if (caches_sequences(seqs, args[1], args[2])) return NULL;
    static const char *const names[3] = {"q", "positions", "out"};
    View io[3] = {0};
    View *kv = NULL;
    AttnArgs *rows = NULL;
    long B = 0, layer = 0, window = 0;
    double scale = 0.0;
    int ok = 0;
    if (view_get(&io[0], args[0], "q", KIND_F32, 3, 0, 0) || get_long(args[3], "layer", &layer) ||
        view_get(&io[1], args[4], "positions", KIND_INT, 1, 0, 0) ||
        view_get(&io[2], args[5], "out", KIND_F32, 3, 1, 0) || get_float(args[6], "scale", &scale) ||
        get_long(args[7], "window", &window))
        goto done;
    B = io[0].shape[0];
    long H = io[0].shape[1], D = io[0].shape[2];
    if (same_shape(&io[0], "q", &io[2], "out") || positions_ok(&io[1], B)) goto done;
    if (layer < 0) { fail("layer must be >= 0, got %ld", layer); goto done; }
    if (window < 0) { fail("window must be >= 0 (0: no sliding window), got %ld", window); goto done; }
    if (D > SM_ATTN_MAX_D) { fail("head dim %ld is above the supported %d", D, SM_ATTN_MAX_D); goto done; }
    kv = PyMem_Calloc(2 * B + 1, sizeof(View));
    rows = PyMem_Calloc(B + 1, sizeof(AttnArgs));
    if (!kv || !rows) { PyErr_NoMemory(); goto done; }
    if (caches_get(kv, seqs, B, layer, &io[1], H, D, 0) || views_apart(io, names, 3, 1u << 2, NULL)) goto done;
    char cn[32];
    for (long i = 0; i < 2 * B; i++) {
        if (extents_apart(io[2].arr, kv[i].arr)) continue;
        if (no_overlap(&io[2], "out", &kv[i], cache_name(cn, i, B), 0)) goto done;
    }
    int half = B > 0 && kv[0].type == NPY_FLOAT16;
    double work = 0.0;
    long units = H; /* per row: heads, or groups of hsub heads over a half cache */
    for (long b = 0; b < B; b++) {
        View *k = &kv[b], *v = &kv[B + b];
        long pos = token_at(&io[1], b), Hkv = (long)k->shape[1];
        const char *kd = k->data + layer * k->st[0] * k->elsize, *vd = v->data + layer * v->st[0] * v->elsize;
        rows[b] = (AttnArgs){F(io[0]) + b * io[0].st[0], half ? NULL : (const float *)kd,
                             half ? NULL : (const float *)vd, F(io[2]) + b * io[2].st[0], 1, H, D, H / Hkv, pos,
                             (long)io[0].st[0], (long)io[0].st[1], (long)k->st[1], (long)k->st[2],
                             (long)v->st[1], (long)v->st[2], (long)io[2].st[0], (long)io[2].st[1], (float)scale,
                             window, half ? (const uint16_t *)kd : NULL, half ? (const uint16_t *)vd : NULL};
        work += 4.0 * H * (pos + 1) * D;
    }
    if (half && B > 0) {
        /* one choice for all rows, a divisor of every row's group (rows may differ in KV heads) */
        long hsub = attn_hsub(H, rows[0].group, D, B);
        for (long b = 0; b < B; b++)
            if (rows[b].group % hsub) hsub = 1;
        for (long b = 0; b < B; b++) rows[b].hsub = hsub;
        units = H / hsub;
    }
    AttnRowsArgs ra = {rows, units, half};
    run_gil(attn_rows_task, &ra, B * units, 1, work, B ? work / B : 0.0); /* the GIL as for one row (rope_rows) */
    ok = 1;
done:
    caches_release(kv, 2 * B);
    PyMem_Free(rows);
    Py_DECREF(seqs[0]);
    Py_DECREF(seqs[1]);
    return finish(io, 3, ok, args[5]);
}

/* ---------------------------------------------------------------- training attention */

/* the pairs' dims from probs (B,H,T,T) and qkv (B*T, 3*H*D), and mask (when given) against probs */
static int train_attn_dims(View *qkv, View *probs, View *mask, TrainAttnArgs *ta)
{
    long B = (long)probs->shape[0], H = (long)probs->shape[1], T = (long)probs->shape[2];
    if (B < 1 || H < 1 || T < 1) return fail("probs must be (B, H, T, T) with B, H and T at least 1");
    if (want_dim(probs, "probs", 3, T, "T, probs dim 2") || want_dim(qkv, "qkv", 0, B * T, "B*T of probs"))
        return -1;
    long W = (long)qkv->shape[1];
    if (W < 3 * H || W % (3 * H))
        return fail("qkv has %ld columns but must hold q, k and v of %ld heads (3*H*D columns)", W, H);
    if (mask->arr && same_shape(probs, "probs", mask, "mask")) return -1;
    ta->B = B;
    ta->H = H;
    ta->T = T;
    ta->D = W / (3 * H);
    ta->qkv = F(*qkv);
    ta->qkv_rs = (long)qkv->st[0];
    ta->probs = F(*probs);
    ta->ps_b = (long)probs->st[0], ta->ps_h = (long)probs->st[1], ta->ps_t = (long)probs->st[2];
    if (mask->arr) {
        ta->mask = F(*mask);
        ta->ms_b = (long)mask->st[0], ta->ms_h = (long)mask->st[1], ta->ms_t = (long)mask->st[2];
    }
    return 0;
}

/* every pair on the pool, without the GIL unless the call is short; MemoryError when a thread's
 * scratch cannot be had */
static int train_attn_run(const TrainAttnArgs *ta, int backward)
{
    int rc;
    if (2.0 * ta->B * ta->H * ta->T * ta->T * ta->D < (double)gil_min_work) {
        rc = sm_train_attention(TA, ta, backward);
    } else {
        Py_BEGIN_ALLOW_THREADS
        rc = sm_train_attention(TA, ta, backward);
        Py_END_ALLOW_THREADS
    }
    if (rc) PyErr_NoMemory();
    return rc;
}

/* attention_train_forward(qkv, probs, out, scale, mask): probs = causal softmax(scale * q k^T)
 * per (sequence, head), out = (probs [* mask]) v with the heads merged */
static PyObject *py_attention_train_forward(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "attention_train_forward")) return NULL;
    static const char *const names[4] = {"qkv", "probs", "out", "mask"};
    View v[4] = {0};
    int ok = 0;
    double scale = 0.0;
    TrainAttnArgs ta = {0};
    int has_mask = args[4] != Py_None;
    if (view_get(&v[0], args[0], "qkv", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "probs", KIND_F32, 4, 1, 0) ||
        view_get(&v[2], args[2], "out", KIND_F32, 2, 1, 0) || get_float(args[3], "scale", &scale) ||
        (has_mask && view_get(&v[3], args[4], "mask", KIND_F32, 4, 0, 0)))
        goto done;
    if (train_attn_dims(&v[0], &v[1], &v[3], &ta) || want_dim(&v[2], "out", 0, ta.B * ta.T, "B*T of probs") ||
        want_dim(&v[2], "out", 1, ta.H * ta.D, "H*D, a third of qkv's columns"))
        goto done;
    if (views_apart(v, names, 4, 1u << 1 | 1u << 2, NULL)) goto done;
    ta.out = F(v[2]);
    ta.out_rs = (long)v[2].st[0];
    ta.scale = (float)scale;
    ok = train_attn_run(&ta, 0) == 0;
done:
    return finish(v, 4, ok, args[2]);
}

/* attention_train_backward(dout, qkv, probs, dqkv, scale, mask): dqkv written from dout */
static PyObject *py_attention_train_backward(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 6, "attention_train_backward")) return NULL;
    static const char *const names[5] = {"dout", "qkv", "probs", "dqkv", "mask"};
    View v[5] = {0};
    int ok = 0;
    double scale = 0.0;
    TrainAttnArgs ta = {0};
    int has_mask = args[5] != Py_None;
    if (view_get(&v[0], args[0], "dout", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "qkv", KIND_F32, 2, 0, 0) ||
        view_get(&v[2], args[2], "probs", KIND_F32, 4, 0, 0) || view_get(&v[3], args[3], "dqkv", KIND_F32, 2, 1, 0) ||
        get_float(args[4], "scale", &scale) || (has_mask && view_get(&v[4], args[5], "mask", KIND_F32, 4, 0, 0)))
        goto done;
    if (train_attn_dims(&v[1], &v[2], &v[4], &ta) || same_shape(&v[1], "qkv", &v[3], "dqkv") ||
        want_dim(&v[0], "dout", 0, ta.B * ta.T, "B*T of probs") ||
        want_dim(&v[0], "dout", 1, ta.H * ta.D, "H*D, a third of qkv's columns"))
        goto done;
    if (views_apart(v, names, 5, 1u << 3, NULL)) goto done;
    ta.dout = F(v[0]);
    ta.dout_rs = (long)v[0].st[0];
    ta.dqkv = F(v[3]);
    ta.dqkv_rs = (long)v[3].st[0];
    ta.scale = (float)scale;
    ok = train_attn_run(&ta, 1) == 0;
done:
    return finish(v, 5, ok, args[3]);
}

/* ---------------------------------------------------------------- loss, optimizer */

static void xent_task(void *ctx, long a, long b) { K->cross_entropy_rows((const XentArgs *)ctx, a, b); }

static PyObject *py_cross_entropy(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 5, "cross_entropy")) return NULL;
    static const char *const names[4] = {"logits", "targets", "losses", "dlogits"};
    static const unsigned same_ok[4] = {[3] = 1u << 0};  /* dlogits may be logits */
    View v[4] = {0};
    int ok = 0;
    double dscale = 0.0;
    int has_d = args[3] != Py_None;
    if (view_get(&v[0], args[0], "logits", KIND_F32, 2, 0, 0) || view_get(&v[1], args[1], "targets", KIND_INT, 1, 0, 0) ||
        view_get(&v[2], args[2], "losses", KIND_F32, 1, 1, 0) ||
        (has_d && view_get(&v[3], args[3], "dlogits", KIND_F32, 2, 1, 0)) || get_float(args[4], "dscale", &dscale))
        goto done;
    long N = v[0].shape[0], V = v[0].shape[1];
    if (want_dim(&v[1], "targets", 0, N, "logits' rows") || want_dim(&v[2], "losses", 0, N, "logits' rows") ||
        (has_d && same_shape(&v[0], "logits", &v[3], "dlogits")))
        goto done;
    if (views_apart(v, names, 4, 1u << 2 | 1u << 3, same_ok)) goto done;
    for (long i = 0; i < N; i++) {
        long t = token_at(&v[1], i);
        if (t < 0 || t >= V) {
            PyErr_Format(PyExc_IndexError, "target %ld at row %ld is out of range for %ld classes", t, i, V);
            goto done;
        }
    }
    XentArgs xa = {F(v[0]), F(v[2]), has_d ? F(v[3]) : NULL, v[1].data, v[1].type == NPY_INT64,
                   V, (long)v[0].st[0], (long)v[2].st[0], (long)v[1].st[0], has_d ? (long)v[3].st[0] : 0,
                   (float)dscale};
    run(xent_task, &xa, N, 1, 25.0 * N * V);
    ok = 1;
done:
    return finish(v, 4, ok, args[2]);
}

/* sample_softmax(logits, scale, u, probs) -> the token drawn from softmax(scale * logits) at
 * u in [0, 1); probs (V,) receives the unnormalised probabilities. The max and the exponentials
 * run over SM_SAMPLE_PARTS slices on the pool (without the GIL: the server's event loop sends
 * text meanwhile); the draw scans only the slice whose running sum holds the target. */
#define SM_SAMPLE_PARTS 16

typedef struct {
    const float *x;
    float *p;
    long V, part;
    float scale, m;
    int exp_phase;
    float part_max[SM_SAMPLE_PARTS];
    double part_sum[SM_SAMPLE_PARTS];
} SampleCtx;

static void sample_task(void *ctx, long i0, long i1)
{
    SampleCtx *c = ctx;
    for (long i = i0; i < i1; i++) {
        long a = i * c->part, n = (a + c->part < c->V ? a + c->part : c->V) - a;
        if (n <= 0) {
            c->part_max[i] = -INFINITY;
            c->part_sum[i] = 0.0;
        } else if (c->exp_phase) {
            c->part_sum[i] = K->shifted_exp(c->x + a, c->p + a, n, c->scale, c->m);
        } else {
            c->part_max[i] = K->scaled_max(c->x + a, n, c->scale);
        }
    }
}

static PyObject *py_sample_softmax(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 4, "sample_softmax")) return NULL;
    static const char *const names[2] = {"logits", "probs"};
    View v[2] = {0};
    int ok = 0;
    double scale = 0.0, u = 0.0;
    long token = -1;
    if (view_get(&v[0], args[0], "logits", KIND_F32, 1, 0, 0) || get_float(args[1], "scale", &scale) ||
        get_float(args[2], "u", &u) || view_get(&v[1], args[3], "probs", KIND_F32, 1, 1, 0))
        goto done;
    if (same_shape(&v[0], "logits", &v[1], "probs") || views_apart(v, names, 2, 1u << 1, NULL)) goto done;
    long V = (long)v[0].shape[0];
    if (V < 1) { fail("logits must hold at least one value"); goto done; }
    if (!(scale > 0.0 && scale <= FLT_MAX)) { fail("scale must be a positive finite number, got %S", args[1]); goto done; }
    if (!(u >= 0.0 && u < 1.0)) { fail("u must be in [0, 1), got %S", args[2]); goto done; }
    SampleCtx c = {F(v[0]), F(v[1]), V, (V + SM_SAMPLE_PARTS - 1) / SM_SAMPLE_PARTS, (float)scale, 0.0f, 0};
    run(sample_task, &c, SM_SAMPLE_PARTS, 1, 4.0 * V);
    c.m = -INFINITY;
    for (int i = 0; i < SM_SAMPLE_PARTS; i++) c.m = c.part_max[i] > c.m ? c.part_max[i] : c.m;
    c.exp_phase = 1;
    run(sample_task, &c, SM_SAMPLE_PARTS, 1, 20.0 * V);
    double total = 0.0;
    for (int i = 0; i < SM_SAMPLE_PARTS; i++) total += c.part_sum[i];
    if (!(total > 0.0 && total <= DBL_MAX)) { fail("logits must hold no NaN or +inf, and at least one finite value"); goto done; }
    double target = u * total, before = 0.0;
    for (int i = 0; i < SM_SAMPLE_PARTS && token < 0; i++) {
        long a = i * c.part, len = (a + c.part < V ? a + c.part : V) - a;
        if (len > 0 && before + c.part_sum[i] > target) {
            long j = K->running_sum_above(c.p + a, len, target - before);
            if (j >= 0) token = a + j;
        }
        before += c.part_sum[i];
    }
    if (token < 0)  /* the sums' rounding left the target unreached: the last possible token */
        for (token = V - 1; token > 0 && c.p[token] == 0.0f; token--) {}
    ok = 1;
done:
    if (!finish(v, 2, ok, Py_None)) return NULL;
    Py_DECREF(Py_None);
    return PyLong_FromLong(token);
}

typedef struct {
    AdamArgs a;
    int flat;
    long cols, rs[4];
} AdamCtx;

static void adam_task(void *ctx, long i0, long i1)
{
    const AdamCtx *c = ctx;
    if (c->flat) {
        K->adamw(&c->a, i0, i1);
        return;
    }
    for (long r = i0; r < i1; r++) {
        AdamArgs a = c->a;
        a.p += r * c->rs[0];
        a.g += r * c->rs[1];
        a.m += r * c->rs[2];
        a.v += r * c->rs[3];
        K->adamw(&a, 0, c->cols);
    }
}

static PyObject *py_adamw_step(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 10, "adamw_step")) return NULL;
    View v[4] = {0};
    int ok = 0;
    static const char *names[4] = {"param", "grad", "m", "v"};
    double lr = 0, b1 = 0, b2 = 0, eps = 0, wd = 0;
    long step = 0;
    for (int i = 0; i < 4; i++)
        if (view_get(&v[i], args[i], names[i], KIND_F32, -1, i != 1, 1)) goto done;
    if (get_float(args[4], "lr", &lr) || get_float(args[5], "beta1", &b1) || get_float(args[6], "beta2", &b2) ||
        get_float(args[7], "eps", &eps) || get_float(args[8], "weight_decay", &wd) || get_long(args[9], "step", &step))
        goto done;
    for (int i = 1; i < 4; i++)
        if (same_shape(&v[0], "param", &v[i], names[i])) goto done;
    /* grad (1) is the only read-only one */
    if (views_apart(v, names, 4, 1u << 0 | 1u << 2 | 1u << 3, NULL)) goto done;
    if (step < 1) { fail("step counts from 1, got %ld", step); goto done; }
    if (!(b1 >= 0.0 && b1 < 1.0 && b2 >= 0.0 && b2 < 1.0)) { fail("betas must be in [0, 1)"); goto done; }
    AdamCtx c = {{F(v[0]), F(v[2]), F(v[3]), F(v[1]), (float)lr, (float)b1, (float)b2, (float)eps, (float)wd,
                  (float)(1.0 / (1.0 - pow(b1, (double)step))), (float)(1.0 / (1.0 - pow(b2, (double)step)))}};
    long rows = v[0].rows, cols = v[0].cols;
    c.flat = 1;
    for (int i = 0; i < 4; i++) {
        c.rs[i] = v[i].rs;
        if (v[i].rs != cols) c.flat = 0;
    }
    c.cols = cols;
    if (c.flat) run(adam_task, &c, rows * cols, 1024, 12.0 * rows * cols);
    else run(adam_task, &c, rows, 1, 12.0 * rows * cols);
    ok = 1;
done:
    return finish(v, 4, ok, args[0]);
}

/* ---------------------------------------------------------------- module */

static const KernelTable *table_for(const char *name)
{
    if (!strcmp(name, "generic")) return &sm_table_generic;
#ifdef SM_HAVE_X86
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (!strcmp(name, "avx2")) return avx2 ? &sm_table_avx2 : NULL;
    if (!strcmp(name, "avx512")) return avx512 ? &sm_table_avx512 : NULL;
    if (!strcmp(name, "best")) return avx512 ? &sm_table_avx512 : avx2 ? &sm_table_avx2 : &sm_table_generic;
#else
    if (!strcmp(name, "best")) return &sm_table_generic;
#endif
    return NULL;
}

/* the quantized kernels of the float kernels' ISA: the VNNI build on AVX-512 machines that
 * have VNNI, else the AVX2 build, which also needs F16C and BMI2 (absent on no AVX2 CPU we
 * know, but a VM may mask them). __builtin_cpu_supports counts AVX-512 features only where
 * the OS saves their registers (libgcc reads XCR0). */
static int amx_int8_granted(void);

static const QuantTable *qtable_for(const KernelTable *t)
{
#ifdef SM_HAVE_X86
    __builtin_cpu_init();
    int x86 = t != &sm_table_generic && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
    int vnni = x86 && t == &sm_table_avx512 && __builtin_cpu_supports("avx512vnni");
    if (vnni && amx_int8_granted()) return &sm_qtable_amx;
    if (vnni) return &sm_qtable_avx512vnni;
    if (x86) return &sm_qtable_avx2;
#endif
    (void)t;
    return &sm_qtable_generic;
}

/* a quantized-kernel build by name, if this CPU runs it: "best" (the float kernels' choice),
 * "amx", "avx512vnni", "avx2", "generic", or "amx-emulated" and "avx512vnni-emulated" (those
 * kernels on AVX2, for the tests) */
static const QuantTable *qtable_named(const char *name)
{
    if (!strcmp(name, "best")) return qtable_for(K);
    if (!strcmp(name, "generic")) return &sm_qtable_generic;
#ifdef SM_HAVE_X86
    const QuantTable *avx2 = qtable_for(&sm_table_avx2);
    if (avx2 != &sm_qtable_avx2 || !table_for("avx2")) return NULL;
    if (!strcmp(name, "avx2")) return &sm_qtable_avx2;
    if (!strcmp(name, "avx512vnni-emulated")) return &sm_qtable_vnni_emulated;
    if (!strcmp(name, "amx-emulated")) return &sm_qtable_amx_emulated;
    const QuantTable *best512 = table_for("avx512") ? qtable_for(&sm_table_avx512) : NULL;
    int vnni = best512 == &sm_qtable_avx512vnni || best512 == &sm_qtable_amx;
    if (!strcmp(name, "avx512vnni") && vnni) return &sm_qtable_avx512vnni;
    if (!strcmp(name, "amx") && best512 == &sm_qtable_amx) return &sm_qtable_amx;
#endif
    return NULL;
}

static const TrainAttnTable *tatable_for(const KernelTable *t)
{
#ifdef SM_HAVE_X86
    if (t != &sm_table_generic) return &sm_tatable_avx2;
#endif
    (void)t;
    return &sm_tatable_generic;
}

static int avx512_bf16_usable(void), amx_bf16_usable(void);

static const GemmTable *gtable_for(const KernelTable *t)
{
#ifdef SM_HAVE_X86
    if (t == &sm_table_avx512 && avx512_bf16_usable() && amx_bf16_usable()) return &sm_gtable_amx;
    if (t == &sm_table_avx512) return avx512_bf16_usable() ? &sm_gtable_avx512bf16 : &sm_gtable_avx512;
    if (t != &sm_table_generic) return &sm_gtable_avx2;
#endif
    (void)t;
    return &sm_gtable_generic;
}

/* a GEMM micro-kernel build by name, if this CPU runs it: "best" (the float kernels'
 * choice), "amx" (BF16 products on AMX tiles), "avx512bf16" (with the AVX512-BF16 tile),
 * "avx512", "avx2", "generic", or "avx512-emulated" and "amx-emulated" (those builds on AVX2,
 * for the tests) */
static const GemmTable *gtable_named(const char *name)
{
    if (!strcmp(name, "best")) return gtable_for(K);
    if (!strcmp(name, "generic")) return &sm_gtable_generic;
#ifdef SM_HAVE_X86
    if (!table_for("avx2")) return NULL;
    if (!strcmp(name, "avx2")) return &sm_gtable_avx2;
    if (!strcmp(name, "avx512-emulated")) return &sm_gtable_avx512_emulated;
    if (!strcmp(name, "avx512") && table_for("avx512")) return &sm_gtable_avx512;
    if (!strcmp(name, "avx512bf16") && table_for("avx512") && avx512_bf16_usable()) return &sm_gtable_avx512bf16;
    if (!strcmp(name, "amx") && table_for("avx512") && avx512_bf16_usable() && amx_bf16_usable()) return &sm_gtable_amx;
    if (!strcmp(name, "amx-emulated")) return &sm_gtable_amx_emulated;
#endif
    return NULL;
}

/* the measured table behind gemm_min_rows (see its definition) */
static long gemm_min_rows_for(const KernelTable *t)
{
#ifdef SM_HAVE_X86
    if (t == &sm_table_avx2) return 1;
#endif
    (void)t;
    return LONG_MAX;
}

static PyObject *py_select_isa(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const KernelTable *t = table_for(name);
    if (!t) return PyErr_Format(PyExc_ValueError, "ISA %R is unknown or not supported by this CPU", arg);
    K = t;
    G = gtable_for(t);
    TA = tatable_for(t);
    gemm_min_rows = gemm_min_rows_for(t);
    Q = qtable_for(t);
    return PyUnicode_FromString(K->name);
}

/* select_quant_isa(name) -> name: the quantized kernels alone (select_isa resets them) */
static PyObject *py_select_quant_isa(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const QuantTable *q = qtable_named(name);
    if (!q) return PyErr_Format(PyExc_ValueError, "quantized-kernel ISA %R is unknown or not supported by this CPU", arg);
    Q = q;
    return PyUnicode_FromString(Q->name);
}

/* select_gemm_isa(name) -> name: the GEMM micro-kernel alone (select_isa resets it) */
static PyObject *py_select_gemm_isa(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const GemmTable *g = gtable_named(name);
    if (!g) return PyErr_Format(PyExc_ValueError, "GEMM ISA %R is unknown or not supported by this CPU", arg);
    G = g;
    return PyUnicode_FromString(G->name);
}

static PyObject *py_gemm_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(G->name); }

/* bf16_products(on) -> the old setting: the native GEMM's products in BF16 where the selected
 * micro-kernel build has a BF16 tile (gemm_bf16_tile() says whether it has) */
static PyObject *py_bf16_products(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    PyObject *old = PyBool_FromLong(bf16_products);
    bf16_products = on;
    return old;
}

static PyObject *py_gemm_bf16_tile(PyObject *self, PyObject *unused) { return PyBool_FromLong(G->tile_bf16 != NULL); }

static PyObject *py_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(K->name); }
static PyObject *py_quant_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(Q->name); }

static PyObject *py_cpu_features(PyObject *self, PyObject *unused)
{
    PyObject *d = PyDict_New();
    if (!d) return NULL;
#ifdef SM_HAVE_X86
    __builtin_cpu_init();
#define FEAT(s)                                                                   \
    if (PyDict_SetItemString(d, s, __builtin_cpu_supports(s) ? Py_True : Py_False)) { \
        Py_DECREF(d);                                                             \
        return NULL;                                                              \
    }
    FEAT("sse4.2") FEAT("avx") FEAT("avx2") FEAT("fma") FEAT("avx512f") FEAT("avx512bw") FEAT("avx512vl")
    FEAT("avx512dq") FEAT("avx512vnni") FEAT("avx512bf16")
#undef FEAT
#endif
    return d;
}

#ifdef SM_HAVE_X86
static unsigned long long xcr0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (unsigned long long)hi << 32 | lo;
}
#endif

/* 1 where the CPU has AMX-TILE and AMX-INT8, the OS saves the tile state (XCR0 bits 17 and
 * 18) and Linux granted this process the tile data (ARCH_REQ_XCOMP_PERM; the grant covers
 * all its threads); asked once */
static int amx_int8_granted(void)
{
    static int known = -1;
    if (known >= 0) return known;
    known = 0;
#if defined(SM_HAVE_X86) && defined(__linux__)
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c >> 27 & 1) && __get_cpuid_max(0, NULL) >= 7) { /* OSXSAVE */
        __cpuid_count(7, 0, a, b, c, d);
        int amx_tile = d >> 24 & 1, amx_int8 = d >> 25 & 1;
        int tiles_saved = (xcr0() & (3ull << 17)) == (3ull << 17);
        if (amx_tile && amx_int8 && tiles_saved) known = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    }
#endif
    return known;
}

/* {"avx512_bf16", "amx_bf16"}: True where the CPU has the instructions AND the OS saves their
 * registers (XCR0), and for AMX where Linux granted this process the tile data
 * (ARCH_REQ_XCOMP_PERM), without which the first tile instruction would kill it. */
static void bf16_detect(int *avx512_bf16, int *amx_bf16)
{
    *avx512_bf16 = *amx_bf16 = 0;
#ifdef SM_HAVE_X86
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c >> 27 & 1) && __get_cpuid_max(0, NULL) >= 7) { /* OSXSAVE */
        unsigned long long x = xcr0();
        __cpuid_count(7, 0, a, b, c, d);
        int avx512f = b >> 16 & 1, amx_bf16_cpu = d >> 22 & 1, amx_tile = d >> 24 & 1;
        __cpuid_count(7, 1, a, b, c, d);
        int avx512_bf16_cpu = a >> 5 & 1;
        int zmm_saved = (x & 0xE6) == 0xE6;                    /* SSE, AVX, opmask, both ZMM halves */
        int tiles_saved = (x & (3ull << 17)) == (3ull << 17);  /* XTILECFG, XTILEDATA */
        *avx512_bf16 = avx512f && avx512_bf16_cpu && zmm_saved;
#ifdef __linux__
        if (amx_bf16_cpu && amx_tile && tiles_saved) *amx_bf16 = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#endif
    }
#endif
}

/* 1 where this process may run AVX512-BF16 instructions, AMX-BF16 ones; asked once */
static int bf16_known = -1, amx_bf16_known;

static int avx512_bf16_usable(void)
{
    if (bf16_known < 0) bf16_detect(&bf16_known, &amx_bf16_known);
    return bf16_known;
}

static int amx_bf16_usable(void)
{
    avx512_bf16_usable();
    return amx_bf16_known;
}

static PyObject *py_bf16_support(PyObject *self, PyObject *unused)
{
    int avx512_bf16, amx_bf16;
    bf16_detect(&avx512_bf16, &amx_bf16);
    return Py_BuildValue("{s:O,s:O}", "avx512_bf16", avx512_bf16 ? Py_True : Py_False, "amx_bf16",
                         amx_bf16 ? Py_True : Py_False);
}

static PyObject *py_set_threads(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) return fail("thread count must be >= 1, got %ld", n), NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sm_pool_set_threads((int)n);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_Format(PyExc_RuntimeError, "could only start %d of %ld threads", sm_pool_threads(), n);
    Py_RETURN_NONE;
}

static PyObject *py_get_threads(PyObject *self, PyObject *unused) { return PyLong_FromLong(sm_pool_threads()); }

/* tuning(linear_max_t, linear_max_t_threaded, parallel_min_work, spin_us) -> the old values;
 * knobs for benchmarks, a negative value leaves that one as is */
static PyObject *py_tuning(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 4, "tuning")) return NULL;
    long v[4] = {0};
    static const char *names[4] = {"linear_max_t", "linear_max_t_threaded", "parallel_min_work", "spin_us"};
    for (int i = 0; i < 4; i++)
        if (get_long(args[i], names[i], &v[i])) return NULL;
    PyObject *old = Py_BuildValue("(llll)", linear_max_t, linear_max_t_threaded, parallel_min_work, sm_pool_spin_us());
    if (v[0] >= 0) linear_max_t = v[0];
    if (v[1] >= 0) linear_max_t_threaded = v[1];
    if (v[2] >= 0) parallel_min_work = v[2];
    if (v[3] >= 0) sm_pool_set_spin_us(v[3]);
    return old;
}

/* pool_stalls(claim_ns, publish_ns): tests widen the thread pool's race windows (pool.h) */
static PyObject *py_pool_stalls(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (nargs_ok(n, 2, "pool_stalls")) return NULL;
    long v[2] = {0};
    if (get_long(args[0], "claim_ns", &v[0]) || get_long(args[1], "publish_ns", &v[1])) return NULL;
    if (v[0] < 0 || v[1] < 0 || v[0] > 1000000000L || v[1] > 1000000000L)
        return fail("pool_stalls: each pause must be 0..1e9 ns, got %ld and %ld", v[0], v[1]), NULL;
    sm_pool_set_stalls_ns(v[0], v[1]);
    Py_RETURN_NONE;
}

/* gemm_min_rows(n) -> the old value; n < 0 leaves it (tests force the native GEMM with 0,
 * benchmarks compare it with BLAS) */
static PyObject *py_gemm_min_rows(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    long old = gemm_min_rows;
    if (n >= 0) gemm_min_rows = n;
    return PyLong_FromLong(old);
}

#define FAST(name) {#name, (PyCFunction)(void (*)(void))py_##name, METH_FASTCALL, NULL}

static PyMethodDef methods[] = {
    FAST(linear), FAST(attention), FAST(kv_cache_store), FAST(embedding), FAST(embedding_backward),
    FAST(layer_norm), FAST(layer_norm_backward), FAST(rms_norm), FAST(gelu), FAST(gelu_backward),
    FAST(silu), FAST(swiglu), FAST(geglu), FAST(softmax),
    FAST(rope), FAST(cross_entropy), FAST(adamw_step), FAST(tuning), FAST(quant_linear),
    FAST(quant_embedding), FAST(quant_dequantize), FAST(gemm_linear), FAST(gemm_dx), FAST(gemm_dw),
    FAST(round_bf16), FAST(sample_softmax), FAST(rope_rows), FAST(kv_cache_store_rows), FAST(attention_rows),
    FAST(attention_train_forward), FAST(attention_train_backward), FAST(pool_stalls),
    {"select_isa", py_select_isa, METH_O, "select_isa(name) -> name: 'avx512', 'avx2', 'generic' or 'best'"},
    {"isa", py_isa, METH_NOARGS, "the ISA whose kernels run"},
    {"quant_isa", py_quant_isa, METH_NOARGS, "the ISA whose quantized-weight kernels run"},
    {"select_gemm_isa", py_select_gemm_isa, METH_O,
     "select_gemm_isa(name) -> name: 'amx', 'avx512bf16', 'avx512', 'avx2', 'generic', 'amx-emulated', "
     "'avx512-emulated' or 'best'"},
    {"gemm_isa", py_gemm_isa, METH_NOARGS, "the ISA whose GEMM micro-kernel runs"},
    {"bf16_products", py_bf16_products, METH_O, "bf16_products(on) -> old: the native GEMM's products in BF16"},
    {"gemm_bf16_tile", py_gemm_bf16_tile, METH_NOARGS, "whether the selected GEMM build has a BF16 tile"},
    {"select_quant_isa", py_select_quant_isa, METH_O,
     "select_quant_isa(name) -> name: 'amx', 'avx512vnni', 'avx2', 'generic', 'amx-emulated', "
     "'avx512vnni-emulated' or 'best'"},
    {"cpu_features", py_cpu_features, METH_NOARGS, "CPU features the kernels care about"},
    {"gemm_min_rows", py_gemm_min_rows, METH_O, "rows from which products run on the native GEMM"},
    {"bf16_support", py_bf16_support, METH_NOARGS, "BF16 instructions usable here: avx512_bf16, amx_bf16"},
    {"set_threads", py_set_threads, METH_O, "native kernel threads, counting the caller"},
    {"get_threads", py_get_threads, METH_NOARGS, "native kernel threads"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_native", "SmallMind native kernels.", -1, methods};

PyMODINIT_FUNC PyInit__native(void)
{
    import_array();
    PyObject *errors = PyImport_ImportModule("smallmind.errors");
    if (!errors) return NULL;
    KernelInputError = PyObject_GetAttrString(errors, "KernelInputError");
    Py_DECREF(errors);
    if (!KernelInputError) return NULL;
    PyObject *np = PyImport_ImportModule("numpy");
    if (!np) return NULL;
    np_shares_memory = PyObject_GetAttrString(np, "shares_memory");
    PyObject *np_exceptions = PyImport_ImportModule("numpy.exceptions");
    np_too_hard = np_exceptions ? PyObject_GetAttrString(np_exceptions, "TooHardError") : NULL;
    Py_XDECREF(np_exceptions);
    Py_DECREF(np);
    if (!np_shares_memory || !np_too_hard) return NULL;
    K = table_for("best");
    G = gtable_for(K);
    TA = tatable_for(K);
    gemm_min_rows = gemm_min_rows_for(K);
    Q = qtable_for(K);
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
#ifdef __VERSION__
    PyModule_AddStringConstant(m, "compiler", "gcc " __VERSION__);
#endif
    return m;
}
