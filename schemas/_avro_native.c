/* A compiled Avro binary encoder and projecting decoder for the subset of Avro our schemas use.
 *
 * Why: cavro (Cython) spends ~0.4 us a field on our records (12 us a message event, 6 a body),
 * a tenth of a backfill worker's time and, on the processor's side, decoding the fields it reads
 * was a fifth of its record path. A plan compiled once per schema (schemas/native_codec.py
 * builds it from the schema JSON) lets both walk C structs instead.
 *
 * The subset: null, boolean, long, string, bytes, long with timestamp-millis (written from an
 * aware datetime or from an int of epoch milliseconds), arrays, records and two-branch unions
 * with null. Anything else is refused when the plan is built, and the
 * schema keeps cavro. Values this code is not sure of (a missing field, a naive datetime, a
 * bool where a long goes, bytes that are not UTF-8, a datum it cannot read to its exact end...)
 * raise ``Fallback``: the caller then asks cavro, which either encodes/decodes them as it always
 * did or raises its own error. So cavro stays the reference and its errors stay the errors.
 *
 * One deliberate difference: an array block with a negative count (the spec's form that also
 * gives the block's size in bytes, which some encoders write) is read as the spec and fastavro
 * read it; cavro 1.0 cannot read it (EOFError).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

enum Kind { K_NULL, K_BOOL, K_LONG, K_STRING, K_BYTES, K_TS_MILLIS, K_ARRAY, K_RECORD, K_NULLABLE };

typedef struct Node {
    int kind;
    struct Node *item;     /* K_ARRAY: items; K_NULLABLE: the non-null branch */
    int null_index;        /* K_NULLABLE: branch index of null (0 or 1) */
    Py_ssize_t nfields;    /* K_RECORD */
    PyObject **names;      /* K_RECORD: interned field names (owned references) */
    struct Node **fields;  /* K_RECORD */
} Node;

static PyObject *Fallback;

/* ---- plans ---------------------------------------------------------------------------- */

static void node_free(Node *n) {
    if (n == NULL) return;
    node_free(n->item);
    for (Py_ssize_t i = 0; i < n->nfields; i++) {
        Py_XDECREF(n->names[i]);
        node_free(n->fields[i]);
    }
    PyMem_Free(n->names);
    PyMem_Free(n->fields);
    PyMem_Free(n);
}

/* A plan is nested tuples: (kind,), (K_ARRAY, item), (K_RECORD, ((name, plan), ...)),
 * (K_NULLABLE, null_index, plan). */
static Node *node_build(PyObject *plan, int depth) {
    if (depth > 64 || !PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) < 1) {
        PyErr_SetString(PyExc_ValueError, "malformed codec plan");
        return NULL;
    }
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(plan, 0));
    if (kind == -1 && PyErr_Occurred()) return NULL;
    Node *n = PyMem_Calloc(1, sizeof(Node));
    if (n == NULL) return (Node *)PyErr_NoMemory();
    n->kind = (int)kind;
    Py_ssize_t size = PyTuple_GET_SIZE(plan);
    switch (kind) {
    case K_NULL: case K_BOOL: case K_LONG: case K_STRING: case K_BYTES: case K_TS_MILLIS:
        return n;
    case K_ARRAY:
        if (size != 2) break;
        n->item = node_build(PyTuple_GET_ITEM(plan, 1), depth + 1);
        if (n->item == NULL) goto fail;
        return n;
    case K_NULLABLE: {
        if (size != 3) break;
        long idx = PyLong_AsLong(PyTuple_GET_ITEM(plan, 1));
        if (idx != 0 && idx != 1) break;
        n->null_index = (int)idx;
        n->item = node_build(PyTuple_GET_ITEM(plan, 2), depth + 1);
        if (n->item == NULL) goto fail;
        return n;
    }
    case K_RECORD: {
        if (size != 2 || !PyTuple_Check(PyTuple_GET_ITEM(plan, 1))) break;
        PyObject *fields = PyTuple_GET_ITEM(plan, 1);
        Py_ssize_t count = PyTuple_GET_SIZE(fields);
        n->names = PyMem_Calloc(count ? count : 1, sizeof(PyObject *));
        n->fields = PyMem_Calloc(count ? count : 1, sizeof(Node *));
        if (n->names == NULL || n->fields == NULL) { PyErr_NoMemory(); goto fail; }
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *pair = PyTuple_GET_ITEM(fields, i);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
                !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
                PyErr_SetString(PyExc_ValueError, "malformed codec plan (record field)");
                goto fail;
            }
            PyObject *name = PyTuple_GET_ITEM(pair, 0);
            Py_INCREF(name);
            PyUnicode_InternInPlace(&name);
            n->names[i] = name;
            n->nfields = i + 1;
            n->fields[i] = node_build(PyTuple_GET_ITEM(pair, 1), depth + 1);
            if (n->fields[i] == NULL) goto fail;
        }
        return n;
    }
    default:
        break;
    }
    PyErr_SetString(PyExc_ValueError, "malformed codec plan");
fail:
    node_free(n);
    return NULL;
}

/* ---- encoding ------------------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) { PyErr_NoMemory(); return -1; }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put_long(Buf *b, int64_t v) {
    if (buf_reserve(b, 10) < 0) return -1;
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    while (z >= 0x80) {
        b->data[b->len++] = (char)((z & 0x7f) | 0x80);
        z >>= 7;
    }
    b->data[b->len++] = (char)z;
    return 0;
}

static int put_raw(Buf *b, const char *p, Py_ssize_t n) {
    if (put_long(b, n) < 0 || buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static int fallback(const char *why) {
    PyErr_SetString(Fallback, why);
    return -1;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* cavro's alternate encoding: (dt - epoch) // timedelta(milliseconds=1), exact. */
static int epoch_millis(PyObject *dt, int64_t *out) {
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(dt);
    int64_t offset_us = 0;
    if (tz == Py_None) return fallback("naive datetime");
    if (tz != PyDateTime_TimeZone_UTC) {
        PyObject *off = PyObject_CallMethod(dt, "utcoffset", NULL);
        if (off == NULL) return -1;
        if (!PyDelta_Check(off)) {
            Py_DECREF(off);
            return fallback("utcoffset is not a timedelta");
        }
        offset_us = ((int64_t)PyDateTime_DELTA_GET_DAYS(off) * 86400 +
                     PyDateTime_DELTA_GET_SECONDS(off)) * 1000000 +
                    PyDateTime_DELTA_GET_MICROSECONDS(off);
        Py_DECREF(off);
    }
    int64_t days = days_from_civil(PyDateTime_GET_YEAR(dt), PyDateTime_GET_MONTH(dt),
                                   PyDateTime_GET_DAY(dt));
    int64_t secs = days * 86400 + PyDateTime_DATE_GET_HOUR(dt) * 3600 +
                   PyDateTime_DATE_GET_MINUTE(dt) * 60 + PyDateTime_DATE_GET_SECOND(dt);
    int64_t us = secs * 1000000 + PyDateTime_DATE_GET_MICROSECOND(dt) - offset_us;
    *out = floor_div(us, 1000);
    return 0;
}

static int encode_node(const Node *n, PyObject *v, Buf *b);

static int encode_record(const Node *n, PyObject *v, Buf *b) {
    if (!PyDict_Check(v)) return fallback("record value is not a dict");
    for (Py_ssize_t i = 0; i < n->nfields; i++) {
        PyObject *field = PyDict_GetItemWithError(v, n->names[i]);
        if (field == NULL) {
            if (PyErr_Occurred()) return -1;
            return fallback("missing field");
        }
        if (encode_node(n->fields[i], field, b) < 0) return -1;
    }
    return 0;
}

static int encode_node(const Node *n, PyObject *v, Buf *b) {
    switch (n->kind) {
    case K_NULL:
        return v == Py_None ? 0 : fallback("not None");
    case K_BOOL:
        if (!PyBool_Check(v)) return fallback("not a bool");
        if (buf_reserve(b, 1) < 0) return -1;
        b->data[b->len++] = v == Py_True ? 1 : 0;
        return 0;
    case K_LONG: {
        if (!PyLong_Check(v) || PyBool_Check(v)) return fallback("not an int");
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) return fallback("int out of range");
        if (x == -1 && PyErr_Occurred()) return -1;
        return put_long(b, x);
    }
    case K_TS_MILLIS: {
        int64_t ms;
        if (PyLong_Check(v) && !PyBool_Check(v)) {
            /* epoch milliseconds already (the processor's output records): written as the
             * long it is, as cavro and fastavro write it */
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow) return fallback("int out of range");
            if (x == -1 && PyErr_Occurred()) return -1;
            return put_long(b, x);
        }
        if (!PyDateTime_Check(v)) return fallback("not a datetime");
        if (epoch_millis(v, &ms) < 0) return -1;
        return put_long(b, ms);
    }
    case K_STRING: {
        if (!PyUnicode_Check(v)) return fallback("not a str");
        Py_ssize_t size;
        const char *p = PyUnicode_AsUTF8AndSize(v, &size);
        if (p == NULL) {
            PyErr_Clear();
            return fallback("str not encodable as UTF-8");
        }
        return put_raw(b, p, size);
    }
    case K_BYTES:
        if (!PyBytes_Check(v)) return fallback("not bytes");
        return put_raw(b, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    case K_ARRAY: {
        if (!PyList_Check(v) && !PyTuple_Check(v)) return fallback("not a list");
        Py_ssize_t count = PySequence_Fast_GET_SIZE(v);
        if (count > 0) {
            if (put_long(b, count) < 0) return -1;
            for (Py_ssize_t i = 0; i < count; i++) {
                /* re-read each time: an item's encoding runs no Python code that could
                 * resize the list, but the size is checked anyway */
                if (i >= PySequence_Fast_GET_SIZE(v)) return fallback("list changed");
                if (encode_node(n->item, PySequence_Fast_ITEMS(v)[i], b) < 0) return -1;
            }
        }
        return put_long(b, 0);
    }
    case K_RECORD:
        return encode_record(n, v, b);
    case K_NULLABLE:
        if (v == Py_None) return put_long(b, n->null_index);
        if (put_long(b, 1 - n->null_index) < 0) return -1;
        return encode_node(n->item, v, b);
    }
    return fallback("unknown plan node");
}

/* ---- decoding ------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p, *end;
} Reader;

static int get_long(Reader *r, int64_t *out) {
    uint64_t z = 0;
    int shift = 0;
    while (1) {
        if (r->p >= r->end) return fallback("truncated");
        unsigned char c = *r->p++;
        if (shift == 63 && (c & 0x7e)) return fallback("varint overflow");
        z |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) break;
        shift += 7;
        if (shift > 63) return fallback("varint too long");
    }
    *out = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
    return 0;
}

static int get_len(Reader *r, Py_ssize_t *out) {
    int64_t n;
    if (get_long(r, &n) < 0) return -1;
    if (n < 0 || n > r->end - r->p) return fallback("bad length");
    *out = (Py_ssize_t)n;
    return 0;
}

/* Decode (want != 0) or skip one value; timestamps read as their long (epoch millis). */
static PyObject *decode_node(const Node *n, Reader *r, int want);

static PyObject *decode_record(const Node *n, Reader *r, int want) {
    PyObject *d = want ? PyDict_New() : NULL;
    if (want && d == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n->nfields; i++) {
        PyObject *v = decode_node(n->fields[i], r, want);
        if (v == NULL) { Py_XDECREF(d); return NULL; }
        if (want) {
            int rc = PyDict_SetItem(d, n->names[i], v);
            Py_DECREF(v);
            if (rc < 0) { Py_DECREF(d); return NULL; }
        } else {
            Py_DECREF(v);
        }
    }
    if (!want) Py_RETURN_NONE;
    return d;
}

static PyObject *decode_node(const Node *n, Reader *r, int want) {
    switch (n->kind) {
    case K_NULL:
        Py_RETURN_NONE;
    case K_BOOL: {
        if (r->p >= r->end) { fallback("truncated"); return NULL; }
        unsigned char c = *r->p++;
        if (c > 1) { fallback("bad boolean"); return NULL; }
        if (!want) Py_RETURN_NONE;
        return PyBool_FromLong(c);
    }
    case K_LONG: case K_TS_MILLIS: {
        int64_t x;
        if (get_long(r, &x) < 0) return NULL;
        if (!want) Py_RETURN_NONE;
        return PyLong_FromLongLong(x);
    }
    case K_STRING: case K_BYTES: {
        Py_ssize_t size;
        if (get_len(r, &size) < 0) return NULL;
        const char *p = (const char *)r->p;
        r->p += size;
        if (!want) Py_RETURN_NONE;
        if (n->kind == K_BYTES) return PyBytes_FromStringAndSize(p, size);
        PyObject *s = PyUnicode_DecodeUTF8(p, size, "strict");
        if (s == NULL) { PyErr_Clear(); fallback("string is not UTF-8"); }
        return s;
    }
    case K_ARRAY: {
        PyObject *list = want ? PyList_New(0) : NULL;
        if (want && list == NULL) return NULL;
        while (1) {
            int64_t count;
            if (get_long(r, &count) < 0) goto array_fail;
            if (count == 0) break;
            if (count < 0) {
                int64_t bytes;
                if (count == INT64_MIN || get_long(r, &bytes) < 0) goto array_fail;
                count = -count;
            }
            /* every item takes at least one byte, except nulls: refuse absurd counts early */
            if (n->item->kind != K_NULL && count > r->end - r->p) {
                fallback("bad array count");
                goto array_fail;
            }
            for (int64_t i = 0; i < count; i++) {
                PyObject *v = decode_node(n->item, r, want);
                if (v == NULL) goto array_fail;
                if (want) {
                    int rc = PyList_Append(list, v);
                    Py_DECREF(v);
                    if (rc < 0) goto array_fail;
                } else {
                    Py_DECREF(v);
                }
            }
        }
        if (!want) Py_RETURN_NONE;
        return list;
    array_fail:
        Py_XDECREF(list);
        return NULL;
    }
    case K_RECORD:
        return decode_record(n, r, want);
    case K_NULLABLE: {
        int64_t branch;
        if (get_long(r, &branch) < 0) return NULL;
        if (branch != 0 && branch != 1) { fallback("bad union branch"); return NULL; }
        if (branch == n->null_index) Py_RETURN_NONE;
        return decode_node(n->item, r, want);
    }
    }
    fallback("unknown plan node");
    return NULL;
}

/* ---- the Codec type ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Node *root;
    /* projection: for each top-level field of the root record, its slot in the result (-1:
     * skipped), and the result's field names in the projection's order */
    Py_ssize_t *slots;
    PyObject *wanted; /* tuple of names, or NULL when there is no projection */
} Codec;

static void Codec_dealloc(Codec *self) {
    node_free(self->root);
    PyMem_Free(self->slots);
    Py_XDECREF(self->wanted);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Codec_init(Codec *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"plan", "fields", NULL};
    PyObject *plan, *fields = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O", kwlist, &plan, &fields)) return -1;
    Node *root = node_build(plan, 0);
    if (root == NULL) return -1;
    /* __init__ called again on a live object: drop what the first call built */
    node_free(self->root);
    self->root = root;
    PyMem_Free(self->slots);
    self->slots = NULL;
    Py_CLEAR(self->wanted);
    if (fields == Py_None) return 0;
    if (root->kind != K_RECORD || !PyTuple_Check(fields)) {
        PyErr_SetString(PyExc_ValueError, "a projection needs a record plan and a tuple");
        return -1;
    }
    self->slots = PyMem_Calloc(root->nfields ? root->nfields : 1, sizeof(Py_ssize_t));
    if (self->slots == NULL) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < root->nfields; i++) self->slots[i] = -1;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fields); j++) {
        PyObject *want = PyTuple_GET_ITEM(fields, j);
        int found = 0;
        for (Py_ssize_t i = 0; i < root->nfields; i++) {
            int eq = PyObject_RichCompareBool(root->names[i], want, Py_EQ);
            if (eq < 0) return -1;
            if (eq) { self->slots[i] = j; found = 1; break; }
        }
        if (!found) {
            PyErr_Format(PyExc_ValueError, "the writer has no field %R", want);
            return -1;
        }
    }
    Py_INCREF(fields);
    self->wanted = fields;
    return 0;
}

static PyObject *Codec_encode(Codec *self, PyObject *args) {
    PyObject *value;
    const char *prefix = NULL;
    Py_ssize_t prefix_len = 0;
    if (!PyArg_ParseTuple(args, "O|y#", &value, &prefix, &prefix_len)) return NULL;
    Buf b = {NULL, 0, 0};
    if (buf_reserve(&b, 512 + prefix_len) < 0) return NULL;
    if (prefix_len) {
        memcpy(b.data, prefix, prefix_len);
        b.len = prefix_len;
    }
    PyObject *out = NULL;
    if (encode_node(self->root, value, &b) == 0)
        out = PyBytes_FromStringAndSize(b.data, b.len);
    PyMem_Free(b.data);
    return out;
}

static PyObject *Codec_decode(Codec *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start = 0;
    if (!PyArg_ParseTuple(args, "y*|n", &view, &start)) return NULL;
    if (start < 0 || start > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    Reader r = {(const unsigned char *)view.buf + start, (const unsigned char *)view.buf + view.len};
    PyObject *result = NULL;
    const Node *root = self->root;
    if (self->wanted == NULL) {
        result = decode_node(root, &r, 1);
    } else {
        Py_ssize_t count = PyTuple_GET_SIZE(self->wanted);
        PyObject **values = PyMem_Calloc(count ? count : 1, sizeof(PyObject *));
        if (values == NULL) { PyBuffer_Release(&view); return PyErr_NoMemory(); }
        int ok = 1;
        for (Py_ssize_t i = 0; i < root->nfields && ok; i++) {
            Py_ssize_t slot = self->slots[i];
            PyObject *v = decode_node(root->fields[i], &r, slot >= 0);
            if (v == NULL) { ok = 0; break; }
            if (slot >= 0) { Py_XDECREF(values[slot]); values[slot] = v; }
            else Py_DECREF(v);
        }
        if (ok) {
            result = PyDict_New();
            for (Py_ssize_t j = 0; result != NULL && j < count; j++) {
                if (PyDict_SetItem(result, PyTuple_GET_ITEM(self->wanted, j), values[j]) < 0)
                    Py_CLEAR(result);
            }
        }
        for (Py_ssize_t j = 0; j < count; j++) Py_XDECREF(values[j]);
        PyMem_Free(values);
    }
    if (result != NULL && r.p != r.end) {
        Py_CLEAR(result);
        fallback("bytes left after the datum");
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef Codec_methods[] = {
    {"encode", (PyCFunction)Codec_encode, METH_VARARGS,
     "encode(record, prefix=b'') -> bytes: prefix + the record's Avro binary encoding"},
    {"decode", (PyCFunction)Codec_decode, METH_VARARGS,
     "decode(data, start=0) -> the datum at data[start:] (the projection's fields, when set)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CodecType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "inboxstream.schemas._avro_native.Codec",
    .tp_basicsize = sizeof(Codec),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Codec(plan, fields=None): one schema's compiled encoder and decoder",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Codec_init,
    .tp_dealloc = (destructor)Codec_dealloc,
    .tp_methods = Codec_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_avro_native",
    "Compiled Avro codec for the schemas' subset (schemas/native_codec.py drives it).", -1, NULL,
};

PyMODINIT_FUNC PyInit__avro_native(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    if (PyType_Ready(&CodecType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    /* under the project's root error, as every error it raises (a signal, never retriable) */
    PyObject *errors = PyImport_ImportModule("inboxstream.errors");
    if (errors == NULL) { Py_DECREF(m); return NULL; }
    PyObject *base = PyObject_GetAttrString(errors, "InboxstreamError");
    Py_DECREF(errors);
    if (base == NULL) { Py_DECREF(m); return NULL; }
    Fallback = PyErr_NewExceptionWithDoc(
        "inboxstream.schemas._avro_native.Fallback",
        "A value or datum outside what the compiled codec handles: ask cavro.", base, NULL);
    Py_DECREF(base);
    if (Fallback == NULL || PyModule_AddObjectRef(m, "Fallback", Fallback) < 0 ||
        PyModule_AddObjectRef(m, "Codec", (PyObject *)&CodecType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "K_NULL", K_NULL);
    PyModule_AddIntConstant(m, "K_BOOL", K_BOOL);
    PyModule_AddIntConstant(m, "K_LONG", K_LONG);
    PyModule_AddIntConstant(m, "K_STRING", K_STRING);
    PyModule_AddIntConstant(m, "K_BYTES", K_BYTES);
    PyModule_AddIntConstant(m, "K_TS_MILLIS", K_TS_MILLIS);
    PyModule_AddIntConstant(m, "K_ARRAY", K_ARRAY);
    PyModule_AddIntConstant(m, "K_RECORD", K_RECORD);
    PyModule_AddIntConstant(m, "K_NULLABLE", K_NULLABLE);
    return m;
}
