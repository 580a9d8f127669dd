/* greenportal._speedups: the portal's hot path in C.
 *
 * Why this file exists
 * --------------------
 * Every step of a task that has a portal, and every trap of every await_,
 * crosses between two greenlets.  The switch pair itself costs about 0.35 to
 * 0.6 us on the machines we measure; the pure-Python glue around it (the
 * Portal.send frame, the loop that drives the coroutine on the portal
 * greenlet, weak-reference lookups, bound-method creation) cost as much again
 * and more.  Issue 3's targets (a step within 1.5x of the bare switch
 * pair, await_ within 2x) cannot be reached from Python bytecode, so the
 * path lives here, each function beside the Python twin it mirrors line for
 * line (greenportal._accel.TWINS names every pair, and a test fails if this
 * module exports anything the table does not name):
 *
 *   PortalBase: send / am_send / tp_iternext,  _portal._PurePortal
 *     rehoming, tp_finalize
 *   run_job(me, value)                         _portal._run_job
 *   drive_coroutine(ref, value)                _portal._drive_coroutine
 *   drive_await(ref, outer)                    _await._drive_await
 *   await_box([aw])                            _await._await_box
 *   portal_of_current_task()                   _await.portal_of_current_task
 *   inline_task_id()                           _await.inline_task_id
 *   acquire(hub) / release(gr)                 _portal._acquire / _release
 *   swap_coro(task, offset, old, new)          _backends._ctask._write_coro
 *
 * plus configure() and set_current_task(), through which greenportal._await
 * (by way of greenportal._accel, the only module that imports this one)
 * hands over the markers, classes and hooks shared with the Python code.
 *
 * Everything else (throw, close, detach, the finalizer's work,
 * introspection, await_'s slow path, and the Python-side rehoming that throw
 * uses) stays in Python, shared by both builds.  The Python references keep
 * their names and are never rebound: _portal and _await pick each
 * implementation once, under names of their own (acquire, run_job,
 * drive_await, await_box, current_portal, inline_portal_id), and the test
 * suite runs against both builds on every Python (GREENPORTAL_PURE_PYTHON=1
 * selects the Python one).  _portal.py's docstring is the design document
 * for both.
 *
 * What was rejected
 * -----------------
 * - Calling greenlet's C API (PyGreenlet_Switch): it needs greenlet's header
 *   at build time, which pip's isolated build environments do not reliably
 *   expose, and it saves little: calling the bound `switch` with
 *   PyObject_CallOneArg is one vectorcall.
 * - Making the whole Portal a C type: rehoming, throw and close run once per
 *   task or on errors; keeping them in Python keeps one readable copy of the
 *   subtle parts.
 * - The limited API: am_send is not in it before 3.10's stable ABI grew it,
 *   and a wheel per version is fine for a small module.
 *
 * Invariants shared with _portal.py (see its "Ownership" section)
 * ---------------------------------------------------------------
 * - While the portal greenlet is suspended, the C frames on its stack hold no
 *   strong reference to the portal, its coroutine, the awaitable or the trap:
 *   they keep only the weak reference.  Every loop below drops its portal,
 *   iterator and trap references before it switches to the hub.
 * - Outcomes cross greenlets as the markers PARKED / RETURNED / RAISED plus
 *   the portal's `_trap` / `_result` fields, never as switch arguments that
 *   would stay on the suspended stack.
 * - C frames add no traceback entries, so nothing here needs the
 *   frame-stripping that the Python version does.
 * - A switch to the hub with anything but a marker (SQLAlchemy's await_), and
 *   every step while `_native` is set, go to the Python methods
 *   _await_natively / _native_step (python_step): that path is shared by
 *   both builds ("Awaits the hub drives" in _portal.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"
#if PY_VERSION_HEX < 0x030B0000
#include "frameobject.h" /* PyFrameObject.f_globals; 3.11+ has PyFrame_GetGlobals */
#endif

/* ---- objects handed over by configure() (from greenportal._await) ------- */

static PyObject *g_getcurrent;     /* greenlet.getcurrent */
static PyObject *g_parked;         /* _PARKED */
static PyObject *g_returned;       /* _RETURNED */
static PyObject *g_finished;       /* _FINISHED */
static PyObject *g_finished_switch;/* _FINISHED.switch */
static PyObject *g_detach;         /* _Detach (exception class) */
static PyObject *g_greenlet_exit;  /* greenlet.GreenletExit */
static PyObject *g_awaitable_iter; /* _awaitable_iter(aw) */
static PyObject *g_current_task;   /* asyncio.current_task, or NULL */
static PyObject *g_running_loop;   /* asyncio._get_running_loop, or NULL */
static PyObject *g_prepare_loop;   /* _eager.guard_loop (3.12+), or NULL */
static PyObject *g_has_portal;     /* _HAS_PORTAL */
static PyObject *g_inline_slow;    /* _inline_task_id_slow */
static PyObject *g_slow;           /* what await_box returns for "take the slow path" */

static PyObject *g_greenlet_class; /* PortalGreenlet */
static PyObject *g_worker;         /* _worker, the body of every portal greenlet */
static Py_ssize_t g_pool_limit;    /* _POOL_LIMIT */
static PyObject *g_raised;         /* _RAISED */
static PyObject *g_no_portal;      /* _NO_PORTAL, an always-dead weak reference */

static PyObject *s_close;
static PyObject *s_portal_ref, *s_throw, *s_dead, *s_value, *s_finalize, *s_parent,
    *s_gr_context, *s_switch, *s_get_coro, *s_pool_key, *s_native_step, *s_await_natively,
    *s_native_resume, *s_dunder_name, *s_co_name;

/* getattr(obj, name) that reports "no such attribute" as 0 with *result NULL
 * instead of raising AttributeError (1: found; -1: another error). */
static int
get_optional_attr(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    return _PyObject_LookupAttr(obj, name, result);
#endif
}

/* ---- the PortalBase type -------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    /* Field meanings are documented on greenportal._portal.Portal. */
    PyObject *coro;
    PyObject *fn;
    PyObject *task_id;
    PyObject *gr;
    PyObject *hub;
    PyObject *park;
    PyObject *switch_;
    PyObject *target;
    PyObject *result;
    PyObject *trap;
    PyObject *awaiting;
    PyObject *native;
    PyObject *weakreflist;
} PortalObject;

static PyTypeObject PortalBase_Type;

#define PORTAL_CHECK(op) PyObject_TypeCheck((op), &PortalBase_Type)

static PyObject *
portal_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PortalObject *self = (PortalObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->coro = Py_NewRef(Py_None);
    self->fn = Py_NewRef(Py_None);
    self->task_id = Py_NewRef(Py_None);
    self->gr = Py_NewRef(Py_None);
    self->hub = Py_NewRef(Py_None);
    self->park = Py_NewRef(Py_None);
    self->switch_ = Py_NewRef(Py_None);
    self->target = Py_NewRef(Py_None);
    self->result = Py_NewRef(Py_None);
    self->trap = Py_NewRef(Py_None);
    self->awaiting = Py_NewRef(Py_None);
    self->native = Py_NewRef(Py_None);
    self->weakreflist = NULL;
    return (PyObject *)self;
}

/* Portal(coro=None, fn=None, task_id=None).  Parsed by hand: the generic
 * keyword parser builds the keyword strings on every call, which costs more
 * than the rest of making a portal. */
static PyObject *s_init_names[3];

static int
portal_init(PortalObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *values[3] = {Py_None, Py_None, Py_None};
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "Portal() takes at most 3 arguments (%zd given)", nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        values[i] = PyTuple_GET_ITEM(args, i);
    }
    if (kwds != NULL) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(kwds, &pos, &key, &value)) {
            int index = -1;
            for (int j = 0; j < 3 && index < 0; j++) {
                if (key == s_init_names[j] ||
                    (PyUnicode_Check(key) && PyUnicode_Compare(key, s_init_names[j]) == 0)) {
                    index = j;
                }
            }
            if (index < 0) {
                PyErr_Format(PyExc_TypeError, "Portal() got an unexpected keyword argument %R",
                             key);
                return -1;
            }
            if (index < nargs) {
                PyErr_Format(PyExc_TypeError, "Portal() got multiple values for argument %R",
                             key);
                return -1;
            }
            values[index] = value;
        }
    }
    Py_XSETREF(self->coro, Py_NewRef(values[0]));
    Py_XSETREF(self->fn, Py_NewRef(values[1]));
    Py_XSETREF(self->task_id, Py_NewRef(values[2]));
    return 0;
}

static int
portal_traverse(PortalObject *self, visitproc visit, void *arg)
{
    /* No Py_VISIT(Py_TYPE(self)): this type is static, and the heap subclass
     * (Portal) has its type visited by subtype_traverse. */
    Py_VISIT(self->coro);
    Py_VISIT(self->fn);
    Py_VISIT(self->task_id);
    Py_VISIT(self->gr);
    Py_VISIT(self->hub);
    Py_VISIT(self->park);
    Py_VISIT(self->switch_);
    Py_VISIT(self->target);
    Py_VISIT(self->result);
    Py_VISIT(self->trap);
    Py_VISIT(self->awaiting);
    Py_VISIT(self->native);
    return 0;
}

static int
portal_clear(PortalObject *self)
{
    Py_CLEAR(self->coro);
    Py_CLEAR(self->fn);
    Py_CLEAR(self->task_id);
    Py_CLEAR(self->gr);
    Py_CLEAR(self->hub);
    Py_CLEAR(self->park);
    Py_CLEAR(self->switch_);
    Py_CLEAR(self->target);
    Py_CLEAR(self->result);
    Py_CLEAR(self->trap);
    Py_CLEAR(self->awaiting);
    Py_CLEAR(self->native);
    return 0;
}

static void
portal_dealloc(PortalObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    portal_clear(self);
    tp->tp_free((PyObject *)self);
}

/* A field read from C: NULL (deleted from Python) reads as None. */
static inline PyObject *
field(PyObject *value)
{
    return value != NULL ? value : Py_None;
}

/* The portal behind a weak reference, as a new reference; NULL if it is gone
 * (no exception set) or on error (exception set; callers check). */
static PortalObject *
deref(PyObject *ref)
{
    PyObject *obj;
#if PY_VERSION_HEX >= 0x030D0000
    if (PyWeakref_GetRef(ref, &obj) < 0) {
        return NULL;
    }
#else
    obj = PyWeakref_GetObject(ref);
    if (obj == NULL) {
        return NULL;
    }
    if (obj == Py_None) {
        return NULL;
    }
    Py_INCREF(obj);
#endif
    if (obj == NULL) {
        return NULL;
    }
    if (!PORTAL_CHECK(obj)) {
        Py_DECREF(obj);
        PyErr_SetString(PyExc_TypeError, "greenportal: a portal_ref points to a non-portal");
        return NULL;
    }
    return (PortalObject *)obj;
}

/* The exception being raised, taken out of the thread state (normalized,
 * traceback attached). */
static PyObject *
take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Raise the exception instance `exc` (a new reference, consumed) as it is. */
static void
raise_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, tb);
#endif
}

/* Set the exception state aside around code that must not see it. */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} SavedError;

static void
save_error(SavedError *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    saved->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&saved->type, &saved->value, &saved->tb);
#endif
}

static void
restore_error(SavedError *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(saved->exc);
#else
    PyErr_Restore(saved->type, saved->value, saved->tb);
#endif
}

/* Raise StopIteration(value) so that `value` comes out intact (a tuple or an
 * exception instance would otherwise be taken as constructor arguments). */
static void
raise_stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

/* What a call that steps an iterator (`res`, its result: a new reference or
 * NULL with the exception set) means to an awaiting frame: PYGEN_NEXT with
 * the next trap, PYGEN_RETURN with the StopIteration value, or PYGEN_ERROR. */
static PySendResult
as_send_result(PyObject *res, PyObject **presult)
{
    *presult = res;
    if (res != NULL) {
        return PYGEN_NEXT;
    }
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        return PYGEN_ERROR;
    }
    PyObject *stop = take_exception();
    PyObject *value = stop != NULL ? PyObject_GetAttr(stop, s_value) : NULL;
    Py_XDECREF(stop);
    *presult = value;
    return value != NULL ? PYGEN_RETURN : PYGEN_ERROR;
}

/* `it.throw(exc)` as an awaiting frame would do it.  Consumes `exc`. */
static PySendResult
throw_into(PyObject *it, PyObject *exc, PyObject **presult)
{
    PyObject *res = PyObject_CallMethodOneArg(it, s_throw, exc);
    Py_DECREF(exc);
    return as_send_result(res, presult);
}

/* Throw `exc` (consumed) into the iterator await_ is driving, as a native
 * await would: GeneratorExit closes the iterator and is then raised here,
 * unless closing fails ("coroutine ignored GeneratorExit" when it awaited
 * again), in which case that error is.  Anything else is thrown in. */
static PySendResult
throw_into_awaited(PyObject *it, PyObject *exc, PyObject **presult)
{
    if (!PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit)) {
        return throw_into(it, exc, presult);
    }
    *presult = NULL;
    PyObject *close;
    if (get_optional_attr(it, s_close, &close) < 0) {
        Py_DECREF(exc);
        return PYGEN_ERROR;
    }
    if (close != NULL) {
        PyObject *res = PyObject_CallNoArgs(close);
        Py_DECREF(close);
        if (res == NULL) {
            Py_DECREF(exc);
            return PYGEN_ERROR;
        }
        Py_DECREF(res);
    }
    raise_exception(exc);
    return PYGEN_ERROR;
}

/* The job ended: reset the portal to "finished" and report its outcome the
 * way a coroutine would (the Python twin is Portal._finished). */
static PySendResult
portal_finished(PortalObject *self, PyObject *marker, PyObject **presult)
{
    PyObject *result = self->result;
    self->result = Py_NewRef(Py_None);
    Py_XSETREF(self->gr, Py_NewRef(Py_None));
    Py_XSETREF(self->target, Py_NewRef(g_finished));
    Py_XSETREF(self->switch_, Py_NewRef(g_finished_switch));
    int returned = marker == g_returned;
    Py_DECREF(marker);
    if (result == NULL) {
        result = Py_NewRef(Py_None);
    }
    if (returned) {
        *presult = result;
        return PYGEN_RETURN;
    }
    if (!PyExceptionInstance_Check(result)) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_SystemError, "greenportal: a portal job raised a non-exception");
        *presult = NULL;
        return PYGEN_ERROR;
    }
    raise_exception(result);
    *presult = NULL;
    return PYGEN_ERROR;
}

/* An error left the switch: if the portal greenlet itself died (it was
 * killed), the portal is finished (the Python twin is Portal._after_error). */
static void
portal_after_error(PortalObject *self)
{
    PyObject *gr = field(self->gr);
    if (gr == Py_None) {
        return;
    }
    PyObject *exc = take_exception();
    Py_INCREF(gr);
    PyObject *dead = PyObject_GetAttr(gr, s_dead);
    Py_DECREF(gr);
    if (dead == NULL) {
        /* Keep the original error; the lookup failure is secondary. */
        PyErr_Clear();
    }
    else {
        int is_dead = PyObject_IsTrue(dead);
        Py_DECREF(dead);
        if (is_dead < 0) {
            PyErr_Clear();
        }
        else if (is_dead) {
            Py_XSETREF(self->gr, Py_NewRef(Py_None));
            Py_XSETREF(self->target, Py_NewRef(g_finished));
            Py_XSETREF(self->switch_, Py_NewRef(g_finished_switch));
        }
    }
    raise_exception(exc);
}

/* ---- the per-thread pool of idle portal greenlets (twin of _acquire and
 * _release in _portal.py; the list lives in the thread state's dict, which
 * is per thread like the greenlets themselves). */

/* This thread's pool (borrowed), created if `create`; NULL with or without an
 * exception set if there is none. */
static PyObject *
thread_pool(int create)
{
    PyObject *dict = PyThreadState_GetDict();
    if (dict == NULL) {
        return NULL;
    }
    PyObject *pool = PyDict_GetItemWithError(dict, s_pool_key);
    if (pool == NULL && !PyErr_Occurred() && create) {
        pool = PyList_New(0);
        if (pool == NULL) {
            return NULL;
        }
        int failed = PyDict_SetItem(dict, s_pool_key, pool);
        Py_DECREF(pool); /* the dict holds it */
        if (failed) {
            return NULL;
        }
    }
    return pool;
}

/* An idle portal greenlet whose parent is now `hub`, or a new one. */
static PyObject *
acquire_impl(PyObject *hub)
{
    PyObject *pool = thread_pool(0);
    while (pool != NULL && PyList_GET_SIZE(pool) > 0) {
        Py_ssize_t last = PyList_GET_SIZE(pool) - 1;
        PyObject *gr = Py_NewRef(PyList_GET_ITEM(pool, last));
        if (PyList_SetSlice(pool, last, last + 1, NULL) < 0) {
            Py_DECREF(gr);
            return NULL;
        }
        PyObject *parent = PyObject_GetAttr(gr, s_parent);
        if (parent == NULL) {
            Py_DECREF(gr);
            return NULL;
        }
        Py_DECREF(parent); /* compared by address only */
        if (parent == hub || PyObject_SetAttr(gr, s_parent, hub) == 0) {
            return gr;
        }
        Py_DECREF(gr);
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            return NULL;
        }
        /* hub descends from gr; it cannot be its parent */
        PyErr_Clear();
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyObject_CallFunctionObjArgs(g_greenlet_class, g_worker, hub, NULL);
}

static PyObject *
acquire(PyObject *module, PyObject *hub)
{
    if (g_greenlet_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenportal._speedups is not configured");
        return NULL;
    }
    return acquire_impl(hub);
}

static PyObject *
release(PyObject *module, PyObject *gr)
{
    PyObject *pool = thread_pool(1);
    if (pool == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    if (PyList_GET_SIZE(pool) >= g_pool_limit) {
        Py_RETURN_FALSE;
    }
    if (PyList_Append(pool, gr) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static int
set_target(PortalObject *self, PyObject *target)
{
    PyObject *switch_ = PyObject_GetAttr(target, s_switch);
    if (switch_ == NULL) {
        return -1;
    }
    Py_XSETREF(self->target, Py_NewRef(target));
    Py_XSETREF(self->switch_, switch_);
    return 0;
}

/* Make `hub` the greenlet that receives our traps, starting if needed (the
 * twin of Portal._rehome). */
static int
portal_rehome(PortalObject *self, PyObject *hub)
{
    PyObject *gr = field(self->gr);
    if (gr == Py_None) {
        if (field(self->target) == g_finished) {
            PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
            return -1;
        }
        gr = acquire_impl(hub);
        if (gr == NULL) {
            return -1;
        }
        PyObject *ref = PyWeakref_NewRef((PyObject *)self, NULL);
        if (ref == NULL) {
            Py_DECREF(gr);
            return -1;
        }
        int failed = PyObject_SetAttr(gr, s_portal_ref, ref);
        Py_DECREF(ref);
        if (failed) {
            Py_DECREF(gr);
            return -1;
        }
        /* The task's context, so that ContextVar.set() in the portal is the
         * task's own. */
        PyObject *context = PyObject_GetAttr(hub, s_gr_context);
        if (context == NULL) {
            Py_DECREF(gr);
            return -1;
        }
        failed = PyObject_SetAttr(gr, s_gr_context, context);
        Py_DECREF(context);
        if (failed || set_target(self, gr) < 0) {
            Py_DECREF(gr);
            return -1;
        }
        Py_XSETREF(self->gr, gr);
    }
    else if (PyObject_SetAttr(gr, s_parent, hub) < 0) {
        return -1;
    }
    PyObject *park = PyObject_GetAttr(hub, s_switch);
    if (park == NULL) {
        return -1;
    }
    Py_XSETREF(self->hub, Py_NewRef(hub));
    Py_XSETREF(self->park, park);
    return 0;
}

/* A step taken by a Python method of the portal (the awaits the hub drives,
 * _portal._PortalCommon._native_step): its return value is the next trap, its
 * StopIteration the job's end.  Consumes `arg`. */
static PySendResult
python_step(PortalObject *self, PyObject *name, PyObject *arg, PyObject **presult)
{
    PyObject *res = PyObject_CallMethodOneArg((PyObject *)self, name, arg);
    Py_DECREF(arg);
    return as_send_result(res, presult);
}

static PySendResult portal_finished(PortalObject *self, PyObject *marker, PyObject **presult);
static void portal_after_error(PortalObject *self);
static int portal_rehome(PortalObject *self, PyObject *hub);

/* A step of the awaitable the hub drives (twin: _portal._PortalCommon's
 * _native_step and _native_resume, without their StopIteration): send
 * `value` in; a trap is returned as it is.  When the awaitable returns, the
 * portal greenlet is resumed with its value, and what the greenlet switches
 * back with is handled as in portal_step_impl (a coroutine is the next
 * awaitable to drive).  An awaitable that raises, or hands over anything but
 * a coroutine, goes to the Python side. */
static PySendResult
native_send(PortalObject *self, PyObject *value, PyObject **presult)
{
    Py_INCREF(value);
    for (;;) {
        PyObject *it = Py_NewRef(self->native);
        PyObject *res = NULL;
        PySendResult status = PyIter_Send(it, value, &res);
        Py_DECREF(it);
        Py_DECREF(value);
        if (status == PYGEN_NEXT) {
            *presult = res;
            return PYGEN_NEXT;
        }
        if (status == PYGEN_RETURN) {
            Py_XSETREF(self->native, Py_NewRef(Py_None));
            PyObject *current = PyObject_CallNoArgs(g_getcurrent);
            if (current == NULL) {
                Py_DECREF(res);
                return PYGEN_ERROR;
            }
            int failed_rehome = current != self->hub && portal_rehome(self, current) < 0;
            Py_DECREF(current);
            if (failed_rehome) {
                Py_DECREF(res);
                return PYGEN_ERROR;
            }
            PyObject *switch_ = PyObject_GetAttr(field(self->gr), s_switch);
            if (switch_ == NULL) {
                Py_DECREF(res);
                return PYGEN_ERROR;
            }
            PyObject *back = PyObject_CallOneArg(switch_, res);
            Py_DECREF(switch_);
            Py_DECREF(res);
            if (back == NULL) {
                portal_after_error(self);
                return PYGEN_ERROR;
            }
            if (back == g_parked) {
                Py_DECREF(back);
                *presult = Py_NewRef(field(self->trap));
                return PYGEN_NEXT;
            }
            if (back == g_returned || back == g_raised) {
                return portal_finished(self, back, presult);
            }
            if (!PyCoro_CheckExact(back)) {
                return python_step(self, s_await_natively, back, presult);
            }
            Py_XSETREF(self->native, back);
            value = Py_NewRef(Py_None);
            continue;
        }
        res = take_exception();
        if (res == NULL) {
            return PYGEN_ERROR;
        }
        PyObject *failed = Py_True;
        PyObject *args[4] = {NULL, (PyObject *)self, res, failed};
        PyObject *next = PyObject_VectorcallMethod(
            s_native_resume, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(res);
        if (next == NULL) {
            return as_send_result(NULL, presult);
        }
        if (next == g_parked) {
            Py_DECREF(next);
            *presult = Py_NewRef(field(self->trap));
            return PYGEN_NEXT;
        }
        Py_DECREF(next);
        value = Py_NewRef(Py_None);
    }
}

/* One step: resume the portal greenlet with `value`, return its next trap. */
static PySendResult
portal_step_impl(PortalObject *self, PyObject *value, PyObject **presult)
{
    *presult = NULL;
    if (self->native != NULL && self->native != Py_None) {
        /* The hub is driving an awaitable the portal greenlet handed it. */
        return native_send(self, value, presult);
    }
    if (g_getcurrent == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenportal._speedups is not configured");
        return PYGEN_ERROR;
    }
    PyObject *current = PyObject_CallNoArgs(g_getcurrent);
    if (current == NULL) {
        return PYGEN_ERROR;
    }
    if (current != self->hub && portal_rehome(self, current) < 0) {
        Py_DECREF(current);
        return PYGEN_ERROR;
    }
    Py_DECREF(current);
    PyObject *switch_ = Py_NewRef(field(self->switch_));
    PyObject *res = PyObject_CallOneArg(switch_, value);
    Py_DECREF(switch_);
    if (res == NULL) {
        portal_after_error(self);
        return PYGEN_ERROR;
    }
    if (res == g_parked) {
        Py_DECREF(res);
        /* Left in place until the next step overwrites it (see _portal.py). */
        *presult = Py_NewRef(field(self->trap));
        return PYGEN_NEXT;
    }
    if (res != g_returned && res != g_raised) {
        /* Not one of ours: an awaitable for the hub to drive (SQLAlchemy's
         * await_), or a stray switch; the Python side tells them apart,
         * but a coroutine is driven here at once. */
        if (PyCoro_CheckExact(res)) {
            Py_XSETREF(self->native, res);
            return native_send(self, Py_None, presult);
        }
        return python_step(self, s_await_natively, res, presult);
    }
    return portal_finished(self, res, presult);
}

/* portal_step_impl, holding the portal for the whole step as a Python method
 * call would: whatever runs in the step may drop the caller's reference. */
static PySendResult
portal_step(PortalObject *self, PyObject *value, PyObject **presult)
{
    Py_INCREF(self);
    PySendResult status = portal_step_impl(self, value, presult);
    Py_DECREF(self);
    return status;
}

static PySendResult
portal_am_send(PyObject *self, PyObject *value, PyObject **presult)
{
    return portal_step((PortalObject *)self, value, presult);
}

static PyObject *
portal_send(PyObject *self, PyObject *value)
{
    PyObject *result;
    switch (portal_step((PortalObject *)self, value, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        raise_stop_iteration(result);
        Py_DECREF(result);
        return NULL;
    default:
        return NULL;
    }
}

static PyObject *
portal_send_method(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "send() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    return portal_send(self, nargs ? args[0] : Py_None);
}

static PyObject *
portal_iternext(PyObject *self)
{
    PyObject *result;
    switch (portal_step((PortalObject *)self, Py_None, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        if (result != Py_None) {
            raise_stop_iteration(result);
        }
        Py_DECREF(result);
        return NULL;
    default:
        return NULL;
    }
}

/* Finalizer: a portal dropped while its job is still running unwinds it (the
 * Python side, Portal._finalize, does the work; most portals are finished by
 * then and cost nothing here). */
static void
portal_finalize(PyObject *op)
{
    PortalObject *self = (PortalObject *)op;
    if (self->gr == NULL || self->gr == Py_None) {
        return;
    }
    SavedError saved;
    save_error(&saved);
    PyObject *res = PyObject_CallMethodNoArgs(op, s_finalize);
    if (res == NULL) {
        PyErr_WriteUnraisable(op);
    }
    else {
        Py_DECREF(res);
    }
    restore_error(&saved);
}

static PyObject *
portal_self(PyObject *self)
{
    return Py_NewRef(self);
}

static PyMethodDef portal_methods[] = {
    {"send", (PyCFunction)(void (*)(void))portal_send_method, METH_FASTCALL,
     "Step the task: resume it with the value and return the next trap."},
    {NULL, NULL, 0, NULL},
};

#define MEMBER(name, field_) \
    {name, T_OBJECT, offsetof(PortalObject, field_), 0, NULL}

static PyMemberDef portal_members[] = {
    MEMBER("coro", coro),
    MEMBER("fn", fn),
    MEMBER("task_id", task_id),
    MEMBER("_gr", gr),
    MEMBER("_hub", hub),
    MEMBER("_park", park),
    MEMBER("_switch", switch_),
    MEMBER("_target", target),
    MEMBER("_result", result),
    MEMBER("_trap", trap),
    MEMBER("_awaiting", awaiting),
    MEMBER("_native", native),
    {NULL, 0, 0, 0, NULL},
};

static PyAsyncMethods portal_as_async = {
    .am_await = portal_self,
    .am_send = portal_am_send,
};

static PyTypeObject PortalBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "greenportal._speedups.PortalBase",
    .tp_basicsize = sizeof(PortalObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C half of greenportal's Portal (its stepping fast path).",
    .tp_new = portal_new,
    .tp_init = (initproc)portal_init,
    .tp_dealloc = (destructor)portal_dealloc,
    .tp_finalize = portal_finalize,
    .tp_traverse = (traverseproc)portal_traverse,
    .tp_clear = (inquiry)portal_clear,
    .tp_weaklistoffset = offsetof(PortalObject, weakreflist),
    .tp_iter = portal_self,
    .tp_iternext = portal_iternext,
    .tp_as_async = &portal_as_async,
    .tp_methods = portal_methods,
    .tp_members = portal_members,
};

/* ---- the portal greenlet's side -------------------------------------------- */

/* Park `trap` on the portal behind `ref` and switch to its hub with PARKED.
 * Consumes `portal` and `trap`.  Returns the hub's value, or NULL with the
 * exception it threw in. */
static PyObject *
park(PortalObject *portal, PyObject *trap)
{
    Py_XSETREF(portal->trap, trap);
    PyObject *switch_ = Py_NewRef(field(portal->park));
    Py_DECREF(portal);
    /* Nothing of the task's is referenced from this frame now. */
    PyObject *res = PyObject_CallOneArg(switch_, g_parked);
    Py_DECREF(switch_);
    return res;
}

/* drive_coroutine(ref, value): step the portal's coroutine until it returns
 * (its value) or raises.  The Python twin is _portal._drive_coroutine. */
static PyObject *
drive_coroutine_impl(PyObject *ref, PyObject *first)
{
    PyObject *value = Py_NewRef(first);
    PyObject *exc = NULL;
    for (;;) {
        PortalObject *portal = deref(ref);
        if (portal == NULL) {
            Py_XDECREF(value);
            Py_XDECREF(exc);
            if (PyErr_Occurred()) {
                return NULL;
            }
            /* Being finalized: the coroutine is closed by its own finalizer. */
            Py_RETURN_NONE;
        }
        PyObject *coro = Py_NewRef(field(portal->coro));
        Py_DECREF(portal);
        PyObject *trap;
        PySendResult status;
        if (exc == NULL) {
            status = PyIter_Send(coro, value, &trap);
            Py_CLEAR(value);
        }
        else {
            status = throw_into(coro, exc, &trap);
            exc = NULL;
        }
        Py_DECREF(coro);
        if (status != PYGEN_NEXT) {
            return trap; /* the return value, or NULL with the exception */
        }
        portal = deref(ref);
        if (portal == NULL) {
            Py_DECREF(trap);
            if (PyErr_Occurred()) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        PyObject *res = park(portal, trap);
        if (res != NULL) {
            value = res;
            continue;
        }
        if (PyErr_ExceptionMatches(g_detach) || PyErr_ExceptionMatches(g_greenlet_exit)) {
            return NULL;
        }
        exc = take_exception();
        if (exc == NULL) {
            return NULL;
        }
    }
}

static PyObject *
drive_coroutine(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "drive_coroutine(ref, value)");
        return NULL;
    }
    return drive_coroutine_impl(args[0], args[1]);
}

/* run_job(me, value): run one job of the portal greenlet `me` (its portal's
 * coroutine, or its sync function) to the end, hand the outcome to the hub,
 * and wait idle in the pool for the next job, whose first value it returns.
 * Returns the outcome's marker instead when the pool is full: the caller
 * (_portal._worker, a Python frame on purpose in both builds) then returns
 * it and the greenlet ends.  The Python twin is _portal._run_job. */
static PyObject *
run_job(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "run_job(me, value)");
        return NULL;
    }
    PyObject *me = args[0], *value = args[1];
    PyObject *ref = PyObject_GetAttr(me, s_portal_ref);
    if (ref == NULL) {
        return NULL;
    }
    PortalObject *portal = deref(ref);
    if (portal == NULL) {
        Py_DECREF(ref);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError,
                            "greenportal: a portal greenlet was resumed without a portal");
        }
        return NULL;
    }
    PyObject *fn = Py_NewRef(field(portal->fn));
    Py_DECREF(portal);
    PyObject *result = fn == Py_None ? drive_coroutine_impl(ref, value) : PyObject_CallNoArgs(fn);
    Py_DECREF(fn);
    PyObject *marker = g_returned;
    if (result == NULL) {
        if (PyErr_ExceptionMatches(g_greenlet_exit)) {
            /* Killed: our portal was dropped without being closed (finalized
             * on another thread); the coroutine is closed by its finalizer. */
            Py_DECREF(ref);
            return NULL;
        }
        if (PyErr_ExceptionMatches(g_detach)) {
            PyErr_Clear();
            result = Py_NewRef(Py_None);
        }
        else {
            result = take_exception();
            marker = g_raised;
            if (result == NULL) {
                Py_DECREF(ref);
                return NULL;
            }
        }
    }
    portal = deref(ref);
    Py_DECREF(ref);
    PyObject *switch_ = NULL;
    if (portal == NULL) {
        /* Being finalized: nobody will read the outcome. */
        Py_DECREF(result);
        if (PyErr_Occurred()) {
            return NULL;
        }
        marker = g_returned;
    }
    else {
        Py_XSETREF(portal->result, result);
        /* The hub's bound switch (invariant: our parent is the portal's hub). */
        if (field(portal->park) != Py_None) {
            switch_ = Py_NewRef(portal->park);
        }
        Py_DECREF(portal);
    }
    /* Idle from here: hold nothing of the job's (see "Ownership"). */
    if (switch_ == NULL) {
        PyObject *parent = PyObject_GetAttr(me, s_parent);
        if (parent == NULL) {
            return NULL;
        }
        switch_ = PyObject_GetAttr(parent, s_switch);
        Py_DECREF(parent);
        if (switch_ == NULL) {
            return NULL;
        }
    }
    if (PyObject_SetAttr(me, s_portal_ref, g_no_portal) < 0 ||
        PyObject_SetAttr(me, s_gr_context, Py_None) < 0) {
        Py_DECREF(switch_);
        return NULL;
    }
    PyObject *pool = thread_pool(1);
    if (pool == NULL && PyErr_Occurred()) {
        Py_DECREF(switch_);
        return NULL;
    }
    if (pool == NULL || PyList_GET_SIZE(pool) >= g_pool_limit) {
        Py_DECREF(switch_);
        return Py_NewRef(marker);
    }
    if (PyList_Append(pool, me) < 0) {
        Py_DECREF(switch_);
        return NULL;
    }
    PyObject *next = PyObject_CallOneArg(switch_, marker);
    Py_DECREF(switch_);
    return next;
}

/* portal_of_current_task(): the twin of _await.portal_of_current_task. */
static PyObject *
portal_of_current_task(PyObject *module, PyObject *unused)
{
    PyObject *gr = PyObject_CallNoArgs(g_getcurrent);
    void *task = NULL;
    int have_task = 0;
    while (gr != NULL && gr != Py_None) {
        PyObject *ref;
        if (get_optional_attr(gr, s_portal_ref, &ref) < 0) {
            Py_DECREF(gr);
            return NULL;
        }
        if (ref != NULL) {
            PortalObject *portal = deref(ref);
            Py_DECREF(ref);
            if (portal == NULL && PyErr_Occurred()) {
                Py_DECREF(gr);
                return NULL;
            }
            if (portal != NULL) {
                PyObject *task_id = field(portal->task_id);
                /* Under Trio (task_id None) a task never steps inside another
                 * task's portal greenlet: being on the chain is proof enough. */
                if (task_id == Py_None || g_current_task == NULL) {
                    Py_DECREF(gr);
                    return (PyObject *)portal;
                }
                if (!have_task) {
                    PyObject *current = PyObject_CallNoArgs(g_current_task);
                    if (current == NULL) {
                        Py_DECREF(portal);
                        Py_DECREF(gr);
                        return NULL;
                    }
                    task = (void *)current;
                    Py_DECREF(current); /* compared by address only */
                    have_task = 1;
                }
                void *want = PyLong_AsVoidPtr(task_id);
                if (want == NULL && PyErr_Occurred()) {
                    Py_DECREF(portal);
                    Py_DECREF(gr);
                    return NULL;
                }
                if (want == task) {
                    Py_DECREF(gr);
                    return (PyObject *)portal;
                }
                Py_DECREF(portal);
            }
        }
        PyObject *parent = PyObject_GetAttr(gr, s_parent);
        Py_DECREF(gr);
        gr = parent;
    }
    if (gr == NULL) {
        return NULL;
    }
    Py_DECREF(gr);
    Py_RETURN_NONE;
}

/* await_'s loop (the Python twin is _await._drive_await): run the portal's
 * current awaitable (portal->awaiting) to completion on this greenlet.
 * Consumes `outer`, which goes back into portal->awaiting when the wait ends.
 * Unlike the Python twin, no portal reference is held while the awaitable
 * runs either (a nested await_ may suspend inside it). */
static PyObject *
drive_await_impl(PyObject *ref, PyObject *outer)
{
    PyObject *value = Py_NewRef(Py_None);
    PyObject *exc = NULL;
    PyObject *result = NULL;
    PortalObject *portal;
    for (;;) {
        portal = deref(ref);
        if (portal == NULL) {
            goto gone;
        }
        PyObject *it = Py_NewRef(field(portal->awaiting));
        Py_DECREF(portal);
        PyObject *trap;
        PySendResult status;
        if (exc == NULL) {
            status = PyIter_Send(it, value, &trap);
            Py_CLEAR(value);
        }
        else {
            status = throw_into_awaited(it, exc, &trap);
            exc = NULL;
        }
        Py_DECREF(it);
        if (status != PYGEN_NEXT) {
            result = trap; /* the value, or NULL with the exception set */
            break;
        }
        portal = deref(ref);
        if (portal == NULL) {
            Py_DECREF(trap);
            goto gone;
        }
        PyObject *res = park(portal, trap);
        if (res != NULL) {
            value = res;
        }
        else {
            exc = take_exception();
            if (exc == NULL) {
                Py_DECREF(outer);
                return NULL;
            }
        }
    }
    /* finally: put the outer awaitable back. */
    portal = deref(ref);
    if (portal != NULL) {
        Py_XSETREF(portal->awaiting, outer);
        Py_DECREF(portal);
        return result;
    }
    Py_DECREF(outer);
    if (result != NULL && PyErr_Occurred()) {
        Py_CLEAR(result);
    }
    return result;

gone:
    /* The portal was dropped without close() (finalized on another thread):
     * unwind the sync frames above us. */
    Py_XDECREF(value);
    Py_DECREF(outer);
    if (PyErr_Occurred()) {
        Py_XDECREF(exc);
        return NULL;
    }
    if (exc == NULL) {
        exc = PyObject_CallNoArgs(g_greenlet_exit);
        if (exc == NULL) {
            return NULL;
        }
    }
    raise_exception(exc);
    return NULL;
}

static PyObject *
drive_await(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "drive_await(ref, outer)");
        return NULL;
    }
    return drive_await_impl(args[0], Py_NewRef(args[1]));
}

/* Does the portal serve the running asyncio task (see Portal.task_id)? */
static int
serves_current_task(PortalObject *portal)
{
    PyObject *task_id = field(portal->task_id);
    if (task_id == Py_None || g_current_task == NULL) {
        return 1;
    }
    PyObject *task = PyObject_CallNoArgs(g_current_task);
    if (task == NULL) {
        return -1;
    }
    void *want = PyLong_AsVoidPtr(task_id);
    Py_DECREF(task);
    if (want == NULL && PyErr_Occurred()) {
        return -1;
    }
    return want == (void *)task;
}

/* await_box([aw]): await_'s fast path.  The awaitable comes in a one-item
 * list that the Python wrapper (_await.await_) no longer references any
 * other way: on the fast path it is taken out of the list, so that while
 * the task is suspended no frame on the portal greenlet's stack holds it
 * (an argument of a C call stays on the caller's stack until the call
 * returns, and the cycle collector cannot see into a suspended greenlet).
 * Returns SLOW, leaving the list as it was, when the current greenlet is not
 * a portal greenlet of the running task: the wrapper then calls
 * _await_slow. */
static PyObject *
await_box(PyObject *module, PyObject *box)
{
    if (g_getcurrent == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenportal._speedups is not configured");
        return NULL;
    }
    if (!PyList_CheckExact(box) || PyList_GET_SIZE(box) != 1) {
        PyErr_SetString(PyExc_TypeError, "await_box() needs a list of one awaitable");
        return NULL;
    }
    PyObject *current = PyObject_CallNoArgs(g_getcurrent);
    if (current == NULL) {
        return NULL;
    }
    PyObject *ref;
    int found = get_optional_attr(current, s_portal_ref, &ref);
    Py_DECREF(current);
    if (found < 0) {
        return NULL;
    }
    if (ref == NULL) {
        return Py_NewRef(g_slow);
    }
    PortalObject *portal = deref(ref);
    if (portal == NULL) {
        Py_DECREF(ref);
        return PyErr_Occurred() ? NULL : Py_NewRef(g_slow);
    }
    int ok = serves_current_task(portal);
    if (ok <= 0) {
        Py_DECREF(portal);
        Py_DECREF(ref);
        return ok < 0 ? NULL : Py_NewRef(g_slow);
    }
    PyObject *aw = PyList_GET_ITEM(box, 0);
    PyObject *it;
    if (PyCoro_CheckExact(aw)) {
        it = Py_NewRef(aw);
    }
    else {
        it = PyObject_CallOneArg(g_awaitable_iter, aw);
        if (it == NULL) {
            Py_DECREF(portal);
            Py_DECREF(ref);
            return NULL;
        }
    }
    if (PyList_SetSlice(box, 0, 1, NULL) < 0) {
        Py_DECREF(it);
        Py_DECREF(portal);
        Py_DECREF(ref);
        return NULL;
    }
    PyObject *outer = portal->awaiting != NULL ? portal->awaiting : Py_NewRef(Py_None);
    portal->awaiting = it;
    Py_DECREF(portal);
    PyObject *result = drive_await_impl(ref, outer);
    Py_DECREF(ref);
    return result;
}

/* ---- replacing a C Task's coroutine (see _backends/_ctask.py) ---------------------- */

/* swap_coro(task, offset, old, new): if the pointer at `offset` bytes into
 * `task` is `old`, make it `new` and check that task.get_coro() now returns
 * `new` (else put `old` back).  Returns 1 on success, 0 if the pre-write
 * check failed (nothing written), -1 if the task did not see the write (it
 * was undone).  The caller keeps `old` alive, so dropping the task's
 * reference to it here cannot free it. */
static PyObject *
swap_coro(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "swap_coro(task, offset, old, new)");
        return NULL;
    }
    PyObject *task = args[0], *old = args[2], *new = args[3];
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (offset < (Py_ssize_t)sizeof(PyObject) || offset % (Py_ssize_t)sizeof(PyObject *) != 0 ||
        offset + (Py_ssize_t)sizeof(PyObject *) > Py_TYPE(task)->tp_basicsize) {
        PyErr_Format(PyExc_ValueError, "greenportal: bad coroutine offset %zd for %s", offset,
                     Py_TYPE(task)->tp_name);
        return NULL;
    }
    PyObject **slot = (PyObject **)((char *)task + offset);
    long outcome;
    PyObject *now = NULL;
    /* On free-threaded builds the task's fields are guarded by its critical
     * section, which Task.__step holds for a whole step: take it, so that a
     * write from another thread (bestow_portal) waits for the step to end.
     * A write from inside the task's own step re-enters it (the outer
     * section is suspended, not deadlocked).  With the GIL this is the GIL. */
#ifdef Py_GIL_DISABLED
    Py_BEGIN_CRITICAL_SECTION(task);
#endif
    if (*slot != old) {
        outcome = 0;
    } else {
        *slot = Py_NewRef(new);
        now = PyObject_CallMethodNoArgs(task, s_get_coro);
        if (now == new) {
            Py_DECREF(old);
            outcome = 1;
        } else {
            *slot = old;
            Py_DECREF(new);
            outcome = now == NULL ? -2 : -1;
        }
    }
#ifdef Py_GIL_DISABLED
    Py_END_CRITICAL_SECTION();
#endif
    Py_XDECREF(now);
    if (outcome == -2) {
        return NULL;
    }
    return PyLong_FromLong(outcome);
}

/* ---- configuration ------------------------------------------------------- */

static PyObject *
configure(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"getcurrent", "parked", "returned", "finished", "detach",
                             "greenlet_exit", "slow", "awaitable_iter", "greenlet_class", "worker",
                             "pool_limit", "raised", "no_portal", "has_portal", "inline_slow",
                             NULL};
    PyObject *getcurrent, *parked, *returned, *finished, *detach, *greenlet_exit, *slow,
        *awaitable_iter, *greenlet_class, *worker, *raised, *no_portal, *has_portal,
        *inline_slow;
    Py_ssize_t pool_limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOOOnOOOO:configure", kwlist, &getcurrent,
                                     &parked, &returned, &finished, &detach, &greenlet_exit,
                                     &slow, &awaitable_iter, &greenlet_class, &worker,
                                     &pool_limit, &raised, &no_portal, &has_portal,
                                     &inline_slow)) {
        return NULL;
    }
    PyObject *finished_switch = PyObject_GetAttrString(finished, "switch");
    if (finished_switch == NULL) {
        return NULL;
    }
    Py_XSETREF(g_getcurrent, Py_NewRef(getcurrent));
    Py_XSETREF(g_parked, Py_NewRef(parked));
    Py_XSETREF(g_returned, Py_NewRef(returned));
    Py_XSETREF(g_finished, Py_NewRef(finished));
    Py_XSETREF(g_finished_switch, finished_switch);
    Py_XSETREF(g_detach, Py_NewRef(detach));
    Py_XSETREF(g_greenlet_exit, Py_NewRef(greenlet_exit));
    Py_XSETREF(g_slow, Py_NewRef(slow));
    Py_XSETREF(g_awaitable_iter, Py_NewRef(awaitable_iter));
    Py_XSETREF(g_greenlet_class, Py_NewRef(greenlet_class));
    Py_XSETREF(g_worker, Py_NewRef(worker));
    g_pool_limit = pool_limit;
    Py_XSETREF(g_raised, Py_NewRef(raised));
    Py_XSETREF(g_no_portal, Py_NewRef(no_portal));
    Py_XSETREF(g_has_portal, Py_NewRef(has_portal));
    Py_XSETREF(g_inline_slow, Py_NewRef(inline_slow));
    Py_RETURN_NONE;
}

/* set_current_task(current_task, get_running_loop, prepare_loop): how to
 * ask asyncio for the running task and loop, and what to call on a loop
 * before a portal is made on it (None: nothing). */
static PyObject *
set_current_task(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "set_current_task(current_task, get_running_loop, prepare_loop)");
        return NULL;
    }
    Py_XSETREF(g_current_task, Py_NewRef(args[0]));
    Py_XSETREF(g_running_loop, Py_NewRef(args[1]));
    Py_XSETREF(g_prepare_loop, args[2] == Py_None ? NULL : Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

/* inline_task_id(): for a portal made inline (with_portal_run and friends):
 * HAS_PORTAL if the current task already has a portal, else the task_id the
 * new portal records.  The asyncio case is answered here; anything else goes
 * to the Python twin's slow part (_await._inline_task_id_slow). */
static PyObject *
inline_task_id(PyObject *module, PyObject *unused)
{
    PyObject *portal = portal_of_current_task(module, NULL);
    if (portal == NULL) {
        return NULL;
    }
    if (portal != Py_None) {
        Py_DECREF(portal);
        return Py_NewRef(g_has_portal);
    }
    Py_DECREF(portal);
    if (g_running_loop != NULL && g_current_task != NULL) {
        PyObject *loop = PyObject_CallNoArgs(g_running_loop);
        if (loop == NULL) {
            return NULL;
        }
        if (loop != Py_None) {
            PyObject *task = PyObject_CallOneArg(g_current_task, loop);
            if (task == NULL) {
                Py_DECREF(loop);
                return NULL;
            }
            if (task != Py_None) {
                if (g_prepare_loop != NULL) {
                    PyObject *res = PyObject_CallOneArg(g_prepare_loop, loop);
                    if (res == NULL) {
                        Py_DECREF(task);
                        Py_DECREF(loop);
                        return NULL;
                    }
                    Py_DECREF(res);
                }
                Py_DECREF(loop);
                PyObject *task_id = PyLong_FromVoidPtr(task);
                Py_DECREF(task);
                return task_id;
            }
            Py_DECREF(task);
        }
        Py_DECREF(loop);
    }
    return PyObject_CallNoArgs(g_inline_slow);
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "Hand the module the Python objects it works with (called once by _portal)."},
    {"set_current_task", (PyCFunction)(void (*)(void))set_current_task, METH_FASTCALL,
     "set_current_task(current_task, get_running_loop, prepare_loop): bind asyncio."},
    {"inline_task_id", inline_task_id, METH_NOARGS,
     "HAS_PORTAL, or the task_id for a new inline portal in the current task."},
    {"drive_coroutine", (PyCFunction)(void (*)(void))drive_coroutine, METH_FASTCALL,
     "drive_coroutine(ref, value): run a portal's coroutine on its greenlet."},
    {"drive_await", (PyCFunction)(void (*)(void))drive_await, METH_FASTCALL,
     "drive_await(ref, outer): run the portal's current awaitable to completion."},
    {"await_box", await_box, METH_O, "await_box([aw]): the fast path of greenportal.await_."},
    {"run_job", (PyCFunction)(void (*)(void))run_job, METH_FASTCALL,
     "run_job(me, value): run one job of a portal greenlet, then wait for the next."},
    {"portal_of_current_task", portal_of_current_task, METH_NOARGS,
     "The portal through which the current code runs, or None."},
    {"acquire", acquire, METH_O, "acquire(hub): an idle portal greenlet parented to hub, or a new one."},
    {"release", release, METH_O, "release(gr): park an idle portal greenlet in this thread's pool."},
    {"swap_coro", (PyCFunction)(void (*)(void))swap_coro, METH_FASTCALL,
     "swap_coro(task, offset, old, new): replace a C Task's coroutine, checked."},
    {NULL, NULL, 0, NULL},
};


/* ---- SwitchProvider: twin of greenportal.sqlalchemy._Provider ------------- */

/* A descriptor for a greenlet class attribute that foreign code (SQLAlchemy)
 * reads on the current greenlet before it waits with a bare switch to the
 * parent.  True where such a wait will be served: the greenlet is the
 * current task's portal greenlet.  A reader called from code outside the
 * modules under `prefix` whose name is in `switchers` (it will switch) gets
 * `arm(gr)` called first.  The library's names come from its integration:
 * nothing here knows them.  (Read once per wait: Python's version costs a
 * method call and a lookup of the portal on top.) */
typedef struct {
    PyObject_HEAD
    PyObject *prefix;    /* str */
    PyObject *switchers; /* frozenset of str */
    PyObject *arm;       /* callable(gr) */
} ProviderObject;

static PyObject *
provider_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"prefix", "switchers", "arm", NULL};
    PyObject *prefix, *switchers, *arm;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UOO:SwitchProvider", kwlist, &prefix,
                                     &switchers, &arm)) {
        return NULL;
    }
    if (!PyFrozenSet_Check(switchers)) {
        PyErr_SetString(PyExc_TypeError, "SwitchProvider: switchers must be a frozenset");
        return NULL;
    }
    ProviderObject *self = (ProviderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->prefix = Py_NewRef(prefix);
    self->switchers = Py_NewRef(switchers);
    self->arm = Py_NewRef(arm);
    return (PyObject *)self;
}

static int
provider_traverse(ProviderObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->prefix);
    Py_VISIT(self->switchers);
    Py_VISIT(self->arm);
    return 0;
}

static int
provider_clear(ProviderObject *self)
{
    Py_CLEAR(self->prefix);
    Py_CLEAR(self->switchers);
    Py_CLEAR(self->arm);
    return 0;
}

static void
provider_dealloc(ProviderObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    provider_clear(self);
    tp->tp_free((PyObject *)self);
}

/* 1 if `frame` runs code of a module under the prefix, 0 if not, -1 on error. */
static int
provider_owns(ProviderObject *self, PyFrameObject *frame)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *globals = PyFrame_GetGlobals(frame);
#else
    PyObject *globals = Py_XNewRef(frame->f_globals);
#endif
    if (globals == NULL) {
        return -1;
    }
    PyObject *name = PyDict_Check(globals) ? PyDict_GetItemWithError(globals, s_dunder_name)
                                           : NULL;
    Py_DECREF(globals);
    if (name == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyUnicode_Check(name)) {
        return 0;
    }
    Py_ssize_t owned = PyUnicode_Tailmatch(name, self->prefix, 0, PY_SSIZE_T_MAX, -1);
    return owned < 0 ? -1 : (int)owned;
}

static PyObject *
provider_get(PyObject *op, PyObject *gr, PyObject *type)
{
    ProviderObject *self = (ProviderObject *)op;
    if (gr == NULL || gr == Py_None) {
        return Py_NewRef(op);
    }
    if (g_getcurrent == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenportal._speedups is not configured");
        return NULL;
    }
    PyObject *current = PyObject_CallNoArgs(g_getcurrent);
    if (current == NULL) {
        return NULL;
    }
    Py_DECREF(current);
    if (current != gr) {
        Py_RETURN_TRUE; /* the class's answer; only the current greenlet can wait */
    }
    PyObject *portal = portal_of_current_task(NULL, NULL);
    if (portal == NULL) {
        return NULL;
    }
    int live = portal != Py_None;
    Py_DECREF(portal);
    if (!live) {
        Py_RETURN_FALSE;
    }
    PyFrameObject *reader = PyEval_GetFrame(); /* borrowed: who reads us */
    if (reader == NULL) {
        Py_RETURN_TRUE;
    }
    PyFrameObject *awaiter = PyFrame_GetBack(reader);
    if (awaiter != NULL) {
        int owned = provider_owns(self, awaiter);
        Py_DECREF(awaiter);
        if (owned < 0) {
            return NULL;
        }
        if (owned) {
            Py_RETURN_TRUE; /* a wait from the library's own code: the hub drives it */
        }
    }
    int owned = provider_owns(self, reader);
    if (owned < 0) {
        return NULL;
    }
    if (owned) {
        PyCodeObject *code = PyFrame_GetCode(reader);
        PyObject *name = PyObject_GetAttr((PyObject *)code, s_co_name);
        Py_DECREF(code);
        if (name == NULL) {
            return NULL;
        }
        int switches = PySet_Contains(self->switchers, name);
        Py_DECREF(name);
        if (switches < 0) {
            return NULL;
        }
        if (switches) {
            PyObject *res = PyObject_CallOneArg(self->arm, gr);
            if (res == NULL) {
                return NULL;
            }
            Py_DECREF(res);
        }
    }
    Py_RETURN_TRUE;
}

static PyTypeObject Provider_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "greenportal._speedups.SwitchProvider",
    .tp_basicsize = sizeof(ProviderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "SwitchProvider(prefix, switchers, arm): see greenportal.sqlalchemy._Provider.",
    .tp_new = provider_new,
    .tp_dealloc = (destructor)provider_dealloc,
    .tp_traverse = (traverseproc)provider_traverse,
    .tp_clear = (inquiry)provider_clear,
    .tp_descr_get = provider_get,
};

/* Multi-phase initialisation (PEP 489), so that the module can declare what
 * it supports through slots:
 *  - Py_mod_gil (3.13+): the module does not need the GIL.  Its state is
 *    per portal (used by the thread that drives it), per thread (the idle
 *    greenlets, kept in the thread state's dict) or immutable after exec
 *    (the interned names and the type); the one write into another object
 *    shared between threads, swap_coro's, holds the task's critical section.
 *    Declared, compiled and tested here only on GIL builds: no free-threaded
 *    CPython is installed on the development machine.
 *  - Py_mod_multiple_interpreters (3.12+): not supported, as the type and the
 *    names are process-wide statics.
 * exec runs once per module object; the statics are made on the first run. */
static int init_names(void);

static int
speedups_exec(PyObject *m)
{
    if (PyType_Ready(&PortalBase_Type) < 0 || PyType_Ready(&Provider_Type) < 0) {
        return -1;
    }
    if (s_portal_ref == NULL && init_names() < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "SwitchProvider", (PyObject *)&Provider_Type) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(m, "PortalBase", (PyObject *)&PortalBase_Type);
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, (void *)speedups_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "greenportal._speedups",
    .m_doc = "The portal's hot path in C; see greenportal._portal and greenportal._accel.",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}

/* The interned attribute names, once per process. */
static int
init_names(void)
{
    s_portal_ref = PyUnicode_InternFromString("portal_ref");
    s_throw = PyUnicode_InternFromString("throw");
    s_close = PyUnicode_InternFromString("close");
    if (s_close == NULL) {
        return -1;
    }
    s_dead = PyUnicode_InternFromString("dead");
    s_value = PyUnicode_InternFromString("value");
    s_finalize = PyUnicode_InternFromString("_finalize");
    s_parent = PyUnicode_InternFromString("parent");
    s_gr_context = PyUnicode_InternFromString("gr_context");
    s_switch = PyUnicode_InternFromString("switch");
    s_get_coro = PyUnicode_InternFromString("get_coro");
    s_native_step = PyUnicode_InternFromString("_native_step");
    s_await_natively = PyUnicode_InternFromString("_await_natively");
    s_native_resume = PyUnicode_InternFromString("_native_resume");
    s_dunder_name = PyUnicode_InternFromString("__name__");
    s_co_name = PyUnicode_InternFromString("co_name");
    s_init_names[0] = PyUnicode_InternFromString("coro");
    s_init_names[1] = PyUnicode_InternFromString("fn");
    s_init_names[2] = PyUnicode_InternFromString("task_id");
    if (!s_init_names[0] || !s_init_names[1] || !s_init_names[2]) {
        return -1;
    }
    s_pool_key = PyUnicode_InternFromString("greenportal._speedups.idle_greenlets");
    if (!s_portal_ref || !s_throw || !s_dead || !s_value || !s_finalize || !s_parent ||
        !s_gr_context || !s_switch || !s_get_coro || !s_pool_key || !s_native_step ||
        !s_await_natively || !s_native_resume || !s_dunder_name ||
        !s_co_name) {
        return -1;
    }
    return 0;
}
