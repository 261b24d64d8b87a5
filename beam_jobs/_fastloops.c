/* Compiled per-event loops of the sessionize job (optional; see beam_jobs/compiled.py).
 *
 * Two loops run once per raw event and were most of the job's Python time
 * (README, "Sessionize throughput"): the JSON-line fast path of
 * EventParser.parse_batch and the per-event loop of UserExampleBuilder.build.
 * Each function here is a line-by-line translation of its Python twin (the
 * fast-path loop of event_parsing.EventParser.parse_batch, example_builder.
 * UserExampleBuilder._event_loop, event_parsing.known_times) and must stay
 * byte-for-byte equal to it:
 * tests/beam_jobs/test_compiled_loops.py runs both on the same inputs.
 * Anything outside the common shape is handed back to Python, so the rare
 * cases keep exactly one implementation.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- small helpers ------------------------------------------------------ */

static Py_ssize_t varint_len(unsigned long long n) {
    Py_ssize_t len = 1;
    while (n > 0x7F) {
        n >>= 7;
        len++;
    }
    return len;
}

static char *write_varint(char *out, unsigned long long n) {
    while (n > 0x7F) {
        *out++ = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *out++ = (char)n;
    return out;
}

/* s.strip() for an exact str: the same object when nothing is stripped. */
static PyObject *strip_str(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n > 0) {
        int kind = PyUnicode_KIND(s);
        const void *data = PyUnicode_DATA(s);
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, 0)) &&
            !Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, n - 1))) {
            Py_INCREF(s);
            return s;
        }
    }
    return PyObject_CallMethod(s, "strip", NULL);
}

/* ---- EventParser fast path ---------------------------------------------- */

/* Whether t holds only objects the collector does not track (str, float,
 * int, ...) or exact tuples of such: then t can never be part of a cycle. */
static int atomic_tuple(PyObject *t) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        PyObject *item = PyTuple_GET_ITEM(t, i);
        if (!PyObject_IS_GC(item)) continue;
        if (!PyTuple_CheckExact(item)) return 0;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(item); j++)
            if (PyObject_IS_GC(PyTuple_GET_ITEM(item, j))) return 0;
    }
    return 1;
}

/* What parse_events reads per record: the columns it needs (user, item,
 * event, timestamp, the context columns in order, then the impression id
 * column when there is one), as str objects for dict lookups and as bytes
 * for the flat-line scanner. */
typedef struct {
    PyObject *loads, *codes, *norms, *contexts, *to_str;
    double lo, hi;
    int with_id;
    Py_ssize_t n_cols;
    PyObject **names;     /* borrowed str objects */
    const char **cnames;  /* their UTF-8, borrowed from the str objects */
    Py_ssize_t *lens;
    PyObject **values;    /* per record: new references or NULL (missing) */
} ParseCtx;

enum { COL_USER, COL_ITEM, COL_EVENT, COL_TS, COL_CONTEXT };

static void clear_values(ParseCtx *ctx) {
    for (Py_ssize_t k = 0; k < ctx->n_cols; k++) Py_CLEAR(ctx->values[k]);
}

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* A JSON string of printable ASCII without escapes, p at the opening quote.
 * Returns the position after the closing quote, or NULL (anything else). */
static const char *scan_plain_string(const char *p, const char *end) {
    p++;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20 || c > 0x7E || c == '\\') return NULL;
        p++;
    }
    return NULL;
}

/* Reads one record as a flat JSON object of printable ASCII: string keys
 * and values without escapes, integers of at most 18 digits, true, false,
 * null. Fills ctx->values for the columns it needs. Returns 1 when the
 * whole record is such an object (so orjson would return the same values),
 * 0 for anything else (floats, escapes, non-ASCII, nesting, a needed key
 * twice, malformed text): then orjson reads it, and decides what is
 * malformed. -1 on a Python error. Values are cleared unless it returns 1. */
static int scan_flat(const char *p, Py_ssize_t size, ParseCtx *ctx) {
    const char *end = p + size;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p = skip_ws(p + 1, end);
        return p == end;
    }
    for (;;) {
        if (p >= end || *p != '"') goto fallback;
        const char *key = p + 1;
        const char *after = scan_plain_string(p, end);
        if (after == NULL) goto fallback;
        Py_ssize_t key_len = after - 1 - key;
        p = skip_ws(after, end);
        if (p >= end || *p != ':') goto fallback;
        p = skip_ws(p + 1, end);
        if (p >= end) goto fallback;
        Py_ssize_t col = -1;
        for (Py_ssize_t k = 0; k < ctx->n_cols; k++) {
            if (ctx->lens[k] == key_len && memcmp(ctx->cnames[k], key, key_len) == 0) {
                if (ctx->values[k] != NULL) goto fallback;  /* a needed key twice */
                if (col < 0) col = k;
            }
        }
        PyObject *value = NULL;
        char c = *p;
        if (c == '"') {
            const char *start = p + 1;
            after = scan_plain_string(p, end);
            if (after == NULL) goto fallback;
            if (col >= 0) {
                value = PyUnicode_DecodeASCII(start, after - 1 - start, NULL);
                if (value == NULL) goto error;
            }
            p = after;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            int negative = c == '-';
            if (negative) p++;
            if (p >= end || *p < '0' || *p > '9') goto fallback;
            if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9') goto fallback;
            long long number = 0;
            int digits = 0;
            while (p < end && *p >= '0' && *p <= '9') {
                number = number * 10 + (*p - '0');
                p++;
                if (++digits > 18) goto fallback;
            }
            if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) goto fallback;
            if (col >= 0) {
                value = PyLong_FromLongLong(negative ? -number : number);
                if (value == NULL) goto error;
            }
        } else if (c == 't' && end - p >= 4 && memcmp(p, "true", 4) == 0) {
            value = Py_True;
            p += 4;
            Py_INCREF(value);
        } else if (c == 'f' && end - p >= 5 && memcmp(p, "false", 5) == 0) {
            value = Py_False;
            p += 5;
            Py_INCREF(value);
        } else if (c == 'n' && end - p >= 4 && memcmp(p, "null", 4) == 0) {
            value = Py_None;
            p += 4;
            Py_INCREF(value);
        } else {
            goto fallback;  /* arrays, objects, anything malformed */
        }
        if (col >= 0) {
            ctx->values[col] = value;
            for (Py_ssize_t k = col + 1; k < ctx->n_cols; k++)  /* columns sharing the key */
                if (ctx->lens[k] == key_len && memcmp(ctx->cnames[k], key, key_len) == 0) {
                    Py_INCREF(value);
                    ctx->values[k] = value;
                }
        } else Py_XDECREF(value);
        p = skip_ws(p, end);
        if (p >= end) goto fallback;
        if (*p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (*p != '}') goto fallback;
        p = skip_ws(p + 1, end);
        if (p != end) goto fallback;
        return 1;
    }
fallback:
    clear_values(ctx);
    return 0;
error:
    clear_values(ctx);
    return -1;
}

/* One record's fast path. Returns 1 (appended to parsed), 0 (not the common
 * shape: the caller takes the slow path) or -1 (error set). */
static int parse_one(PyObject *record, ParseCtx *ctx, PyObject *parsed, Py_ssize_t *scanned_lines) {
    int result = 0;
    PyObject *row = NULL, *user = NULL, *item = NULL;
    PyObject *context = NULL, *event = NULL, *pair = NULL, *ts_obj = NULL;
    PyObject **values = ctx->values;
    if (!PyBytes_CheckExact(record)) return 0;
    int scanned = scan_flat(PyBytes_AS_STRING(record), PyBytes_GET_SIZE(record), ctx);
    if (scanned < 0) return -1;
    *scanned_lines += scanned;
    if (scanned == 0) {
        row = PyObject_CallOneArg(ctx->loads, record);
        if (row == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
            PyErr_Clear();
            return 0;
        }
        if (!PyDict_CheckExact(row)) goto done;
        for (Py_ssize_t k = 0; k < ctx->n_cols; k++) {
            PyObject *v = PyDict_GetItemWithError(row, ctx->names[k]);
            if (v == NULL && PyErr_Occurred()) { result = -1; goto done; }
            Py_XINCREF(v);
            values[k] = v;
        }
    }
    PyObject *raw_event = values[COL_EVENT], *raw_ts = values[COL_TS];
    if (values[COL_USER] == NULL || !PyUnicode_CheckExact(values[COL_USER]) ||
        values[COL_ITEM] == NULL || !PyUnicode_CheckExact(values[COL_ITEM]) ||
        raw_event == NULL || !PyUnicode_CheckExact(raw_event) ||
        raw_ts == NULL || !PyLong_CheckExact(raw_ts))
        goto done;
    if ((user = strip_str(values[COL_USER])) == NULL || (item = strip_str(values[COL_ITEM])) == NULL) {
        result = -1;
        goto done;
    }
    PyObject *code = PyDict_GetItemWithError(ctx->codes, raw_event);  /* borrowed */
    if (code == NULL && PyErr_Occurred()) { result = -1; goto done; }
    double ts = PyLong_AsDouble(raw_ts);
    if (ts == -1.0 && PyErr_Occurred()) { result = -1; goto done; }
    if (PyUnicode_GET_LENGTH(user) == 0 || PyUnicode_GET_LENGTH(item) == 0 || code == NULL ||
        !(ctx->lo <= ts && ts < ctx->hi))
        goto done;
    Py_ssize_t n_norms = PyList_GET_SIZE(ctx->norms);
    context = PyTuple_New(n_norms);
    if (context == NULL) { result = -1; goto done; }
    for (Py_ssize_t i = 0; i < n_norms; i++) {
        /* (raw column, default, categorical, normalizer) */
        PyObject *norm = PyList_GET_ITEM(ctx->norms, i);
        PyObject *v = values[COL_CONTEXT + i];
        if (v == NULL) v = Py_None;
        PyObject *value;
        if (PyUnicode_CheckExact(v) && PyTuple_GET_ITEM(norm, 2) == Py_True) {
            value = strip_str(v);
            if (value != NULL && PyUnicode_GET_LENGTH(value) == 0) {
                Py_DECREF(value);
                value = PyTuple_GET_ITEM(norm, 1);
                Py_INCREF(value);
            }
        } else {
            value = PyObject_CallOneArg(PyTuple_GET_ITEM(norm, 3), v);
        }
        if (value == NULL) { result = -1; goto done; }
        PyTuple_SET_ITEM(context, i, value);
    }
    if (ctx->contexts != Py_None) {
        PyObject *shared = PyDict_SetDefault(ctx->contexts, context, context);  /* borrowed */
        if (shared == NULL) { result = -1; goto done; }
        Py_INCREF(shared);
        Py_SETREF(context, shared);
    }
    ts_obj = PyFloat_FromDouble(ts);
    if (ts_obj == NULL) { result = -1; goto done; }
    if (!ctx->with_id) {
        event = PyTuple_Pack(4, ts_obj, code, item, context);
    } else {
        PyObject *raw_id = values[COL_CONTEXT + n_norms];
        PyObject *impression_id = PyObject_CallOneArg(ctx->to_str, raw_id ? raw_id : Py_None);
        if (impression_id == NULL) { result = -1; goto done; }
        event = PyTuple_Pack(5, ts_obj, code, item, context, impression_id);
        Py_DECREF(impression_id);
    }
    if (event == NULL) { result = -1; goto done; }
    /* Tuples of str / float / int (and of such tuples) can never be part of a
     * cycle: untracked now, the collector does not walk the events a bundle
     * holds until its next flush (CPython itself untracks them lazily, but
     * only after walking each once). */
    int atomic = atomic_tuple(context);
    if (atomic) {
        PyObject_GC_UnTrack(context);
        PyObject_GC_UnTrack(event);
    }
    if (PyList_CheckExact(parsed)) {
        pair = PyTuple_Pack(2, user, event);
        if (pair == NULL) { result = -1; goto done; }
        if (atomic) PyObject_GC_UnTrack(pair);
        if (PyList_Append(parsed, pair) < 0) { result = -1; goto done; }
    } else {  /* pending: user -> list of events, appended in place */
        PyObject *events = PyDict_GetItemWithError(parsed, user);  /* borrowed */
        if (events == NULL) {
            if (PyErr_Occurred()) { result = -1; goto done; }
            events = PyList_New(0);
            if (events == NULL) { result = -1; goto done; }
            int failed = PyDict_SetItem(parsed, user, events);
            Py_DECREF(events);  /* parsed holds it */
            if (failed < 0) { result = -1; goto done; }
        }
        if (!PyList_CheckExact(events)) {
            PyErr_SetString(PyExc_TypeError, "pending values must be lists");
            result = -1;
            goto done;
        }
        if (PyList_Append(events, event) < 0) { result = -1; goto done; }
    }
    result = 1;
done:
    clear_values(ctx);
    Py_XDECREF(row);
    Py_XDECREF(user);
    Py_XDECREF(item);
    Py_XDECREF(context);
    Py_XDECREF(event);
    Py_XDECREF(pair);
    Py_XDECREF(ts_obj);
    return result;
}

PyDoc_STRVAR(parse_events_doc,
"parse_events(records, loads, user_col, item_col, event_col, ts_col, lo, hi, codes, norms,\n"
"             contexts, id_col, to_str, slow, parsed) -> int\n\n"
"The fast path of EventParser.parse_batch compiled: for each record of the common\n"
"shape appends (user, event) to parsed (a list), or event to parsed[user] (a dict\n"
"of lists, EventParser.parse_into); calls slow(record) for every other one, in order.\n"
"Flat ASCII JSON lines are read by a scanner here, anything else by loads (orjson);\n"
"returns how many records the scanner read.");

static PyObject *parse_events(PyObject *module, PyObject *args) {
    PyObject *records, *user_col, *item_col, *event_col, *ts_col, *id_col, *slow, *parsed;
    ParseCtx ctx;
    memset(&ctx, 0, sizeof(ctx));
    if (!PyArg_ParseTuple(args, "OOUUUUddO!O!OOOOO", &records, &ctx.loads, &user_col, &item_col,
                          &event_col, &ts_col, &ctx.lo, &ctx.hi, &PyDict_Type, &ctx.codes,
                          &PyList_Type, &ctx.norms, &ctx.contexts, &id_col, &ctx.to_str, &slow,
                          &parsed))
        return NULL;
    if (!PyList_CheckExact(parsed) && !PyDict_Check(parsed)) {
        PyErr_SetString(PyExc_TypeError, "parsed must be a list or a dict");
        return NULL;
    }
    if (ctx.contexts != Py_None && !PyDict_CheckExact(ctx.contexts)) {
        PyErr_SetString(PyExc_TypeError, "contexts must be a dict or None");
        return NULL;
    }
    if (id_col != Py_None && !PyUnicode_Check(id_col)) {
        PyErr_SetString(PyExc_TypeError, "id_col must be a str or None");
        return NULL;
    }
    Py_ssize_t n_norms = PyList_GET_SIZE(ctx.norms);
    for (Py_ssize_t i = 0; i < n_norms; i++) {
        PyObject *norm = PyList_GET_ITEM(ctx.norms, i);
        if (!PyTuple_CheckExact(norm) || PyTuple_GET_SIZE(norm) != 4 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(norm, 0))) {
            PyErr_SetString(PyExc_TypeError, "norms must hold (column, default, categorical, "
                            "normalizer) tuples");
            return NULL;
        }
    }
    ctx.with_id = id_col != Py_None;
    ctx.n_cols = COL_CONTEXT + n_norms + ctx.with_id;
    ctx.names = PyMem_Calloc(ctx.n_cols, sizeof(PyObject *));
    ctx.cnames = PyMem_Calloc(ctx.n_cols, sizeof(char *));
    ctx.lens = PyMem_Calloc(ctx.n_cols, sizeof(Py_ssize_t));
    ctx.values = PyMem_Calloc(ctx.n_cols, sizeof(PyObject *));
    PyObject *result = NULL, *iter = NULL;
    if (!ctx.names || !ctx.cnames || !ctx.lens || !ctx.values) {
        PyErr_NoMemory();
        goto finally;
    }
    ctx.names[COL_USER] = user_col;
    ctx.names[COL_ITEM] = item_col;
    ctx.names[COL_EVENT] = event_col;
    ctx.names[COL_TS] = ts_col;
    for (Py_ssize_t i = 0; i < n_norms; i++)
        ctx.names[COL_CONTEXT + i] = PyTuple_GET_ITEM(PyList_GET_ITEM(ctx.norms, i), 0);
    if (ctx.with_id) ctx.names[COL_CONTEXT + n_norms] = id_col;
    for (Py_ssize_t k = 0; k < ctx.n_cols; k++) {
        ctx.cnames[k] = PyUnicode_AsUTF8AndSize(ctx.names[k], &ctx.lens[k]);
        if (ctx.cnames[k] == NULL) goto finally;
    }
    iter = PyObject_GetIter(records);
    if (iter == NULL) goto finally;
    PyObject *record;
    Py_ssize_t scanned = 0;
    while ((record = PyIter_Next(iter)) != NULL) {
        int ok = parse_one(record, &ctx, parsed, &scanned);
        if (ok == 0) {
            PyObject *r = PyObject_CallOneArg(slow, record);
            if (r == NULL) ok = -1;
            Py_XDECREF(r);
        }
        Py_DECREF(record);
        if (ok < 0) goto finally;
    }
    if (PyErr_Occurred()) goto finally;
    result = PyLong_FromSsize_t(scanned);
finally:
    Py_XDECREF(iter);
    if (ctx.values) clear_values(&ctx);
    PyMem_Free(ctx.names);
    PyMem_Free(ctx.cnames);
    PyMem_Free(ctx.lens);
    PyMem_Free(ctx.values);
    return result;
}

/* ---- UserExampleBuilder per-event loop ---------------------------------- */

static PyObject *one;  /* the int 1, made at import */

static int list_incr(PyObject *list, Py_ssize_t i) {
    PyObject *old = PyList_GET_ITEM(list, i);
    PyObject *new = PyNumber_Add(old, one);
    if (new == NULL) return -1;
    PyList_SET_ITEM(list, i, new);
    Py_DECREF(old);
    return 0;
}

/* example_encoding._bytes_entry_from_pieces(key, pieces[start:stop]). */
static PyObject *bytes_entry_from_pieces(PyObject *key, PyObject *pieces, Py_ssize_t start,
                                         Py_ssize_t stop) {
    unsigned long long inner = 0;
    for (Py_ssize_t i = start; i < stop; i++) inner += PyBytes_GET_SIZE(PyList_GET_ITEM(pieces, i));
    unsigned long long feature = 1 + varint_len(inner) + inner;
    unsigned long long klen = PyBytes_GET_SIZE(key);
    unsigned long long entry = 1 + varint_len(klen) + klen + 1 + varint_len(feature) + feature;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 1 + varint_len(entry) + entry);
    if (out == NULL) return NULL;
    char *p = PyBytes_AS_STRING(out);
    *p++ = '\n';
    p = write_varint(p, entry);
    *p++ = '\n';
    p = write_varint(p, klen);
    memcpy(p, PyBytes_AS_STRING(key), klen);
    p += klen;
    *p++ = '\x12';
    p = write_varint(p, feature);
    *p++ = '\n';
    p = write_varint(p, inner);
    for (Py_ssize_t i = start; i < stop; i++) {
        PyObject *piece = PyList_GET_ITEM(pieces, i);
        memcpy(p, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece));
        p += PyBytes_GET_SIZE(piece);
    }
    return out;
}

static int call_close_session(PyObject *close_session, PyObject *session_items, double start,
                              int is_eval, PyObject *per_user, PyObject *outputs,
                              PyObject *counts) {
    PyObject *start_obj = PyFloat_FromDouble(start);
    if (start_obj == NULL) return -1;
    PyObject *r = PyObject_CallFunctionObjArgs(close_session, session_items, start_obj,
                                               is_eval ? Py_True : Py_False, per_user, outputs,
                                               counts, NULL);
    Py_DECREF(start_obj);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

PyDoc_STRVAR(event_loop_doc,
"event_loop(consts, events, split_at, target, label_of, click_ts, click_pieces, items,\n"
"           user_entries, per_user, outputs, retrieval_out, ranking_out, counts,\n"
"           item_stats, context_counter) -> (train_exposures, accepted) or None\n\n"
"UserExampleBuilder._event_loop compiled. None (nothing touched) when an input is\n"
"outside the shape it handles; the caller then runs the Python loop.");

/* consts: (gap, history_key | None, history_len, context_cache, context_entries,
 *          derived_values, derived_cache, no_label, age_prefix | None, age_default,
 *          ts_prefixes, close_session, empty_bytes) */
static PyObject *event_loop(PyObject *module, PyObject *args) {
    PyObject *consts, *events, *target, *label_of, *click_ts, *click_pieces, *items;
    PyObject *user_entries, *per_user, *outputs, *retrieval_out, *ranking_out, *counts;
    PyObject *item_stats, *context_counter;
    double split_at;
    if (!PyArg_ParseTuple(args, "O!O!dO!O!O!O!OSSOO!O!OO!O!", &PyTuple_Type, &consts,
                          &PyList_Type, &events, &split_at, &PyList_Type, &target, &PyDict_Type,
                          &label_of, &PyList_Type, &click_ts, &PyList_Type, &click_pieces, &items,
                          &user_entries, &per_user, &outputs, &PyTuple_Type, &retrieval_out,
                          &PyTuple_Type, &ranking_out, &counts, &PyDict_Type, &item_stats,
                          &PyDict_Type, &context_counter))
        return NULL;
    PyObject *history_key, *context_cache, *context_entries, *derived_values, *derived_cache;
    PyObject *no_label, *age_prefix, *ts_prefixes, *close_session, *empty;
    double gap, age_default;
    Py_ssize_t history_len;
    if (!PyArg_ParseTuple(consts, "dOnO!OOO!SOdO!OS", &gap, &history_key, &history_len,
                          &PyDict_Type, &context_cache, &context_entries, &derived_values,
                          &PyDict_Type, &derived_cache, &no_label, &age_prefix, &age_default,
                          &PyTuple_Type, &ts_prefixes, &close_session, &empty))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(events);
    Py_ssize_t n_clicks = PyList_GET_SIZE(click_ts);
    /* The shapes handled: (float ts in [0, 2**53), code 0..2, str item, context)
     * events, int targets, float click times, bytes pieces and outputs as
     * two lists each. Checked before anything is touched. */
    if (n == 0 || PyList_GET_SIZE(target) != n || PyTuple_GET_SIZE(ts_prefixes) != 10 ||
        PyTuple_GET_SIZE(retrieval_out) != 2 || PyTuple_GET_SIZE(ranking_out) != 2 ||
        (history_key != Py_None && !PyBytes_CheckExact(history_key)) ||
        (age_prefix != Py_None && !PyBytes_CheckExact(age_prefix)) ||
        PyList_GET_SIZE(click_pieces) != n_clicks)
        Py_RETURN_NONE;
    for (int i = 0; i < 2; i++)
        if (!PyList_CheckExact(PyTuple_GET_ITEM(retrieval_out, i)) ||
            !PyList_CheckExact(PyTuple_GET_ITEM(ranking_out, i)))
            Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(events, i);
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 4 ||
            !PyFloat_CheckExact(PyTuple_GET_ITEM(e, 0)) ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(e, 1)) ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(e, 2)) ||
            !PyLong_CheckExact(PyList_GET_ITEM(target, i)))
            Py_RETURN_NONE;
        double ts = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(e, 0));
        long code = PyLong_AsLong(PyTuple_GET_ITEM(e, 1));
        if (!(ts >= 0.0 && ts < 9007199254740992.0) || code < 0 || code > 2) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    for (Py_ssize_t i = 0; i < n_clicks; i++)
        if (!PyFloat_CheckExact(PyList_GET_ITEM(click_ts, i)) ||
            !PyBytes_CheckExact(PyList_GET_ITEM(click_pieces, i)))
            Py_RETURN_NONE;
    /* label_of as an array aligned with events (borrowed bytes; NULL = no label):
     * one C index per impression instead of an int object and a dict lookup. */
    PyObject **labels = PyMem_Calloc((size_t)n, sizeof(PyObject *));
    if (labels == NULL) return PyErr_NoMemory();
    {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(label_of, &pos, &key, &value)) {
            if (!PyLong_CheckExact(key) || !PyBytes_CheckExact(value)) {
                PyMem_Free(labels);
                Py_RETURN_NONE;
            }
            Py_ssize_t at = PyLong_AsSsize_t(key);
            if (at == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                PyMem_Free(labels);
                Py_RETURN_NONE;
            }
            if (at >= 0 && at < n) labels[at] = value;
        }
    }
    if (!PyBytes_CheckExact(no_label)) {
        PyMem_Free(labels);
        Py_RETURN_NONE;
    }

    PyObject *result = NULL, *session_items = NULL, *history_entry = NULL;
    PyObject *context_key = NULL, *context_bytes = NULL;
    PyObject *last_context = NULL;  /* borrowed from events, which outlive the loop */
    long long last_hour = -1;
    long accepted[2][3] = {{0, 0, 0}, {0, 0, 0}};
    long train_exposures = 0;
    Py_ssize_t history_end = -1, next_click = 0;
    session_items = PyList_New(0);
    if (session_items == NULL) goto error;
    history_entry = empty;
    Py_INCREF(history_entry);
    double session_start = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(PyList_GET_ITEM(events, 0), 0));
    double prev_ts = session_start;
    int prev_eval = prev_ts >= split_at;
    for (Py_ssize_t index = 0; index < n; index++) {
        PyObject *e = PyList_GET_ITEM(events, index);
        double ts = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(e, 0));
        long code = PyLong_AsLong(PyTuple_GET_ITEM(e, 1));
        PyObject *item = PyTuple_GET_ITEM(e, 2);
        PyObject *context = PyTuple_GET_ITEM(e, 3);
        int is_eval = ts >= split_at;
        if (ts - prev_ts > gap || is_eval != prev_eval) {
            if (call_close_session(close_session, session_items, session_start, prev_eval,
                                   per_user, outputs, counts) < 0)
                goto error;
            Py_SETREF(session_items, PyList_New(0));
            if (session_items == NULL) goto error;
            session_start = ts;
        }
        prev_ts = ts;
        prev_eval = is_eval;
        PyObject *stats = PyDict_GetItemWithError(item_stats, item);  /* borrowed */
        if (stats == NULL) {
            if (PyErr_Occurred()) goto error;
            stats = Py_BuildValue("[iiiii]", 0, 0, 0, 0, 0);
            if (stats == NULL) goto error;
            int failed = PyDict_SetItem(item_stats, item, stats);
            Py_DECREF(stats);  /* item_stats holds it */
            if (failed < 0) goto error;
        }
        if (!PyList_CheckExact(stats) || PyList_GET_SIZE(stats) != 5) {
            PyErr_SetString(PyExc_TypeError, "item_stats values must be 5-item lists");
            goto error;
        }
        if (list_incr(stats, 3) < 0) goto error;
        accepted[is_eval][code] += 1;
        if (!is_eval && list_incr(stats, 2) < 0) goto error;
        if (code == 2) continue;  /* a follow */
        int exposure;
        PyObject *label;  /* borrowed */
        if (code == 1) {
            if (PyList_Append(session_items, item) < 0) goto error;
            long t = PyLong_AsLong(PyList_GET_ITEM(target, index));
            if (t == -1 && PyErr_Occurred()) goto error;
            exposure = t < 0;
            if (!is_eval && list_incr(stats, 1) < 0) goto error;
            label = empty;
        } else {
            exposure = 1;
            if (!is_eval && list_incr(stats, 0) < 0) goto error;
            label = labels[index] != NULL ? labels[index] : no_label;
        }
        int counted = exposure && !is_eval;
        if (counted) {
            if (list_incr(stats, 4) < 0) goto error;
            train_exposures += 1;
        }
        while (next_click < n_clicks &&
               PyFloat_AS_DOUBLE(PyList_GET_ITEM(click_ts, next_click)) < ts)
            next_click += 1;
        if (history_key != Py_None && next_click != history_end) {
            history_end = next_click;
            Py_ssize_t start = next_click - history_len;
            Py_SETREF(history_entry, bytes_entry_from_pieces(history_key, click_pieces,
                                                             start > 0 ? start : 0, next_click));
            if (history_entry == NULL) goto error;
        }
        long long whole = (long long)ts;
        /* A user's consecutive events mostly share the hour and the (interned)
         * context object: then the key and entries of the previous event are
         * the ones the caches would return again. */
        if (whole / 3600 != last_hour || context != last_context || context_key == NULL) {
            PyObject *hour_obj = PyLong_FromLongLong(whole / 3600);
            if (hour_obj == NULL) goto error;
            PyObject *derived = PyDict_GetItemWithError(derived_cache, hour_obj);  /* borrowed */
            Py_DECREF(hour_obj);
            PyObject *derived_ref = NULL;
            if (derived == NULL) {
                if (PyErr_Occurred()) goto error;
                derived_ref = PyObject_CallOneArg(derived_values, PyTuple_GET_ITEM(e, 0));
                if (derived_ref == NULL) goto error;
                derived = derived_ref;
            }
            Py_XSETREF(context_key, PyTuple_Pack(2, context, derived));
            Py_XDECREF(derived_ref);
            if (context_key == NULL) goto error;
            PyObject *cached = PyDict_GetItemWithError(context_cache, context_key);
            if (cached != NULL) {
                Py_INCREF(cached);
            } else {
                if (PyErr_Occurred()) goto error;
                cached = PyObject_CallFunctionObjArgs(
                    context_entries, context, PyTuple_GET_ITEM(context_key, 1), NULL);
                if (cached == NULL) goto error;
            }
            Py_XSETREF(context_bytes, cached);
            if (!PyBytes_CheckExact(context_bytes)) {
                PyErr_SetString(PyExc_TypeError, "context entries must be bytes");
                goto error;
            }
            last_hour = whole / 3600;
            last_context = context;
        }
        if (counted) {
            PyObject *seen = PyDict_GetItemWithError(context_counter, context_key);
            PyObject *count;
            if (seen == NULL) {
                if (PyErr_Occurred()) goto error;
                count = PyLong_FromLong(1);
            } else {
                count = PyNumber_Add(seen, one);
            }
            int failed = count == NULL || PyDict_SetItem(context_counter, context_key, count) < 0;
            Py_XDECREF(count);
            if (failed) goto error;
        }
        PyObject *item_info = PyObject_GetItem(items, item);
        if (item_info == NULL) goto error;
        if (!PyTuple_Check(item_info) || PyTuple_GET_SIZE(item_info) < 3 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(item_info, 0))) {
            PyErr_SetString(PyExc_TypeError, "unexpected item row");
            Py_DECREF(item_info);
            goto error;
        }
        /* The example: b"\n" + varint(body length) + the body's entries, written
         * straight into the one bytes object (age and timestamp included). */
        PyObject *pieces[4] = {user_entries, history_entry, PyTuple_GET_ITEM(item_info, 0),
                               context_bytes};
        char age_bytes[4];
        double age = 0.0;
        Py_ssize_t age_len = 0;
        if (age_prefix != Py_None) {
            PyObject *created = PyTuple_GET_ITEM(item_info, 2);
            if (created == Py_None) {
                age = age_default;
            } else {
                double c = PyFloat_AsDouble(created);
                if (c == -1.0 && PyErr_Occurred()) {
                    Py_DECREF(item_info);
                    goto error;
                }
                age = ts > c ? (ts - c) / 3600.0 : 0.0;
            }
            if (PyFloat_Pack4(age, age_bytes, 1) < 0) {
                Py_DECREF(item_info);
                goto error;
            }
            age_len = PyBytes_GET_SIZE(age_prefix) + 4;
        }
        unsigned long long ts_value = (unsigned long long)whole;
        Py_ssize_t ts_varint = varint_len(ts_value);
        PyObject *ts_prefix = PyTuple_GET_ITEM(ts_prefixes, ts_varint);
        Py_ssize_t body = age_len + PyBytes_GET_SIZE(ts_prefix) + ts_varint +
                          PyBytes_GET_SIZE(per_user) + PyBytes_GET_SIZE(label);
        for (int i = 0; i < 4; i++) body += PyBytes_GET_SIZE(pieces[i]);
        PyObject *example = PyBytes_FromStringAndSize(
            NULL, 1 + varint_len((unsigned long long)body) + body);
        if (example == NULL) {
            Py_DECREF(item_info);
            goto error;
        }
        char *w = PyBytes_AS_STRING(example);
        *w++ = '\n';
        w = write_varint(w, (unsigned long long)body);
        for (int i = 0; i < 4; i++) {
            memcpy(w, PyBytes_AS_STRING(pieces[i]), PyBytes_GET_SIZE(pieces[i]));
            w += PyBytes_GET_SIZE(pieces[i]);
        }
        Py_DECREF(item_info);
        if (age_len) {
            memcpy(w, PyBytes_AS_STRING(age_prefix), PyBytes_GET_SIZE(age_prefix));
            w += PyBytes_GET_SIZE(age_prefix);
            memcpy(w, age_bytes, 4);
            w += 4;
        }
        memcpy(w, PyBytes_AS_STRING(ts_prefix), PyBytes_GET_SIZE(ts_prefix));
        w += PyBytes_GET_SIZE(ts_prefix);
        w = write_varint(w, ts_value);
        memcpy(w, PyBytes_AS_STRING(per_user), PyBytes_GET_SIZE(per_user));
        w += PyBytes_GET_SIZE(per_user);
        memcpy(w, PyBytes_AS_STRING(label), PyBytes_GET_SIZE(label));
        PyObject *out = PyTuple_GET_ITEM(code == 1 ? retrieval_out : ranking_out, is_eval);
        int failed = PyList_Append(out, example);
        Py_DECREF(example);
        if (failed < 0) goto error;
    }
    if (call_close_session(close_session, session_items, session_start, prev_eval, per_user,
                           outputs, counts) < 0)
        goto error;
    result = Py_BuildValue("l[[lll][lll]]", train_exposures, accepted[0][0], accepted[0][1],
                           accepted[0][2], accepted[1][0], accepted[1][1], accepted[1][2]);
error:
    PyMem_Free(labels);
    Py_XDECREF(session_items);
    Py_XDECREF(history_entry);
    Py_XDECREF(context_key);
    Py_XDECREF(context_bytes);
    return result;
}

/* ---- per-user time summaries ---------------------------------------------- */

PyDoc_STRVAR(known_times_doc,
"known_times(events, items, keep) -> None | (lo, hi, times | None, known count)\n\n"
"event_parsing.known_times compiled (events: a list of event tuples).");

static PyObject *known_times(PyObject *module, PyObject *args) {
    PyObject *events, *items;
    int keep;
    if (!PyArg_ParseTuple(args, "O!Op", &PyList_Type, &events, &items, &keep)) return NULL;
    PyObject *times = keep ? PyList_New(0) : NULL;
    if (keep && times == NULL) return NULL;
    PyObject *lo = NULL, *hi = NULL;  /* borrowed: the first smallest / largest */
    double lo_value = 0.0, hi_value = 0.0;
    Py_ssize_t n_known = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
        PyObject *e = PyList_GET_ITEM(events, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) < 3 ||
            !PyFloat_CheckExact(PyTuple_GET_ITEM(e, 0))) {
            PyErr_SetString(PyExc_TypeError, "events must be tuples starting with a float");
            goto error;
        }
        if (items != Py_None) {
            int known = PySequence_Contains(items, PyTuple_GET_ITEM(e, 2));
            if (known < 0) goto error;
            if (!known) continue;
        }
        PyObject *ts = PyTuple_GET_ITEM(e, 0);
        double value = PyFloat_AS_DOUBLE(ts);
        /* min() / max() keep the first of equal values; ts is never NaN. */
        if (lo == NULL || value < lo_value) { lo = ts; lo_value = value; }
        if (hi == NULL || value > hi_value) { hi = ts; hi_value = value; }
        if (keep && PyList_Append(times, ts) < 0) goto error;
        n_known++;
    }
    if (lo == NULL) {
        Py_XDECREF(times);
        Py_RETURN_NONE;
    }
    PyObject *count = PyLong_FromSsize_t(n_known);
    if (count == NULL) goto error;
    PyObject *result = PyTuple_Pack(4, lo, hi, keep ? times : Py_None, count);
    Py_DECREF(count);
    Py_XDECREF(times);
    return result;
error:
    Py_XDECREF(times);
    return NULL;
}

PyDoc_STRVAR(train_times_doc,
"train_times(events, limit) -> (impression times, click times) as int64 bytes | None\n\n"
"The int(ts) of the impressions and clicks before limit, in order, native-endian\n"
"int64 (array('q').frombytes); None when a timestamp is outside [0, 2**53).");

static PyObject *train_times(PyObject *module, PyObject *args) {
    PyObject *events;
    double limit;
    if (!PyArg_ParseTuple(args, "O!d", &PyList_Type, &events, &limit)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(events);
    long long *buf = PyMem_Malloc(sizeof(long long) * (size_t)(2 * n + 1));
    if (buf == NULL) return PyErr_NoMemory();
    long long *impressions = buf, *clicks = buf + n;
    Py_ssize_t n_impressions = 0, n_clicks = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(events, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) < 2 ||
            !PyFloat_CheckExact(PyTuple_GET_ITEM(e, 0)) ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(e, 1))) {
            PyMem_Free(buf);
            Py_RETURN_NONE;
        }
        double ts = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(e, 0));
        long code = PyLong_AsLong(PyTuple_GET_ITEM(e, 1));
        if (code == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyMem_Free(buf);
            Py_RETURN_NONE;
        }
        if (!(ts < limit) || (code != 0 && code != 1)) continue;
        if (!(ts >= 0.0 && ts < 9007199254740992.0)) {
            PyMem_Free(buf);
            Py_RETURN_NONE;
        }
        if (code == 0) impressions[n_impressions++] = (long long)ts;
        else clicks[n_clicks++] = (long long)ts;
    }
    PyObject *result = Py_BuildValue("(y#y#)", (const char *)impressions,
                                     (Py_ssize_t)(n_impressions * sizeof(long long)),
                                     (const char *)clicks,
                                     (Py_ssize_t)(n_clicks * sizeof(long long)));
    PyMem_Free(buf);
    return result;
}

/* ---- TFRecord framing ----------------------------------------------------- */

/* CRC-32C (Castagnoli), as TFRecord files use: SSE4.2's crc32 instruction
 * when the CPU has it, else a byte-wise table. */
static uint32_t crc32c_table[256];

static void crc32c_init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
        crc32c_table[i] = crc;
    }
}

static uint32_t crc32c_sw(const unsigned char *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    while (n--) crc = crc32c_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(const unsigned char *p, size_t n) {
    uint64_t crc = 0xFFFFFFFFu;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = _mm_crc32_u64(crc, word);
        p += 8;
        n -= 8;
    }
    uint32_t crc32 = (uint32_t)crc;
    while (n--) crc32 = _mm_crc32_u8(crc32, *p++);
    return crc32 ^ 0xFFFFFFFFu;
}
static int have_sse42 = 0;
#define CRC32C(p, n) (have_sse42 ? crc32c_hw((p), (n)) : crc32c_sw((p), (n)))
#define DETECT_CRC32C() (have_sse42 = __builtin_cpu_supports("sse4.2"))
#else
#define CRC32C(p, n) crc32c_sw((p), (n))
#define DETECT_CRC32C() ((void)0)
#endif

static uint32_t masked_crc32c(const unsigned char *p, size_t n) {
    uint32_t crc = CRC32C(p, n);
    return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

static void put_u32le(char *out, uint32_t v) {
    for (int i = 0; i < 4; i++) out[i] = (char)((v >> (8 * i)) & 0xFF);
}

PyDoc_STRVAR(tfrecord_frames_doc,
"tfrecord_frames(records) -> bytes\n\n"
"raw_io.tfrecord_frames compiled: each record framed as TFRecord files hold it\n"
"(8-byte length, its masked crc32c, the data, the data's masked crc32c).");

static PyObject *tfrecord_frames(PyObject *module, PyObject *records) {
    if (!PyList_CheckExact(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a list of bytes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(records), total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        if (!PyBytes_CheckExact(r)) {
            PyErr_SetString(PyExc_TypeError, "records must be a list of bytes");
            return NULL;
        }
        total += 16 + PyBytes_GET_SIZE(r);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *w = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        uint64_t len = (uint64_t)PyBytes_GET_SIZE(r);
        for (int k = 0; k < 8; k++) w[k] = (char)((len >> (8 * k)) & 0xFF);
        put_u32le(w + 8, masked_crc32c((const unsigned char *)w, 8));
        memcpy(w + 12, PyBytes_AS_STRING(r), len);
        put_u32le(w + 12 + len, masked_crc32c((const unsigned char *)w + 12, len));
        w += 16 + len;
    }
    return out;
}

PyDoc_STRVAR(crc32c_doc,
"crc32c(data, hardware=True) -> int\n\n"
"CRC-32C of data; hardware=False forces the table path (tests check both).");

static PyObject *crc32c(PyObject *module, PyObject *args) {
    Py_buffer data;
    int hardware = 1;
    if (!PyArg_ParseTuple(args, "y*|p", &data, &hardware)) return NULL;
    uint32_t crc = hardware ? CRC32C((const unsigned char *)data.buf, (size_t)data.len)
                            : crc32c_sw((const unsigned char *)data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

/* ---- attribution and labels ---------------------------------------------- */

/* events as (ts, code, item) arrays, or 0 when a tuple is not the shape the
 * twins below handle (then the caller runs the Python function). */
static int event_columns(PyObject *events, double *ts, int *codes, PyObject **items) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
        PyObject *e = PyList_GET_ITEM(events, i);
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) < 3 ||
            !PyFloat_CheckExact(PyTuple_GET_ITEM(e, 0)) ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(e, 1)))
            return 0;
        long code = PyLong_AsLong(PyTuple_GET_ITEM(e, 1));
        if (code < 0 || code > 2) {
            PyErr_Clear();
            return 0;
        }
        ts[i] = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(e, 0));
        codes[i] = (int)code;
        if (items != NULL) items[i] = PyTuple_GET_ITEM(e, 2);
    }
    return 1;
}

/* dict[key] = index (an int object). */
static int dict_set_index(PyObject *dict, PyObject *key, Py_ssize_t index) {
    PyObject *position = PyLong_FromSsize_t(index);
    if (position == NULL) return -1;
    int failed = PyDict_SetItem(dict, key, position);
    Py_DECREF(position);
    return failed;
}

PyDoc_STRVAR(attribute_by_time_doc,
"attribute_by_time(events, split_at, window) -> list[int] | None\n\n"
"example_builder.attribute_by_time compiled (None: events of another shape).");

static PyObject *attribute_by_time(PyObject *module, PyObject *args) {
    PyObject *events;
    double split_at, window;
    if (!PyArg_ParseTuple(args, "O!dd", &PyList_Type, &events, &split_at, &window)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(events);
    double *ts = PyMem_Malloc(sizeof(double) * (size_t)(n + 1));
    int *codes = PyMem_Malloc(sizeof(int) * (size_t)(n + 1));
    PyObject **items = PyMem_Malloc(sizeof(PyObject *) * (size_t)(n + 1));
    Py_ssize_t *target = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    PyObject *last_impression = PyDict_New(), *last_click = PyDict_New(), *result = NULL;
    if (!ts || !codes || !items || !target || !last_impression || !last_click) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto finally;
    }
    if (!event_columns(events, ts, codes, items)) {
        result = Py_None;
        Py_INCREF(result);
        goto finally;
    }
    int in_eval = 0;
    for (Py_ssize_t index = 0; index < n; index++) {
        double t = ts[index];
        if (t >= split_at && !in_eval) {
            in_eval = 1;
            PyDict_Clear(last_impression);
            PyDict_Clear(last_click);
        }
        target[index] = -1;
        if (codes[index] == 0) {
            if (dict_set_index(last_impression, items[index], index) < 0) goto finally;
            continue;
        }
        Py_ssize_t impression = -1;
        if (codes[index] == 2) {
            PyObject *click = PyDict_GetItemWithError(last_click, items[index]);
            if (click == NULL && PyErr_Occurred()) goto finally;
            if (click != NULL) {
                Py_ssize_t c = PyLong_AsSsize_t(click);
                if (t - ts[c] <= window) impression = target[c];
            }
        }
        if (impression < 0) {
            PyObject *candidate = PyDict_GetItemWithError(last_impression, items[index]);
            if (candidate == NULL && PyErr_Occurred()) goto finally;
            if (candidate != NULL) {
                Py_ssize_t c = PyLong_AsSsize_t(candidate);
                if (t - ts[c] <= window) impression = c;
            }
        }
        target[index] = impression;
        if (codes[index] == 1 && dict_set_index(last_click, items[index], index) < 0)
            goto finally;
    }
    result = PyList_New(n);
    if (result == NULL) goto finally;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromSsize_t(target[i]);
        if (v == NULL) {
            Py_CLEAR(result);
            goto finally;
        }
        PyList_SET_ITEM(result, i, v);
    }
finally:
    PyMem_Free(ts);
    PyMem_Free(codes);
    PyMem_Free(items);
    PyMem_Free(target);
    Py_XDECREF(last_impression);
    Py_XDECREF(last_click);
    return result;
}

PyDoc_STRVAR(impression_labels_doc,
"impression_labels(events, target, split_at, labels) ->\n"
"    (label_of, attributed, without, labelled) | None\n\n"
"example_builder.impression_labels compiled (None: inputs of another shape).");

static PyObject *table_list(long table[2][3]) {
    return Py_BuildValue("[[lll][lll]]", table[0][0], table[0][1], table[0][2], table[1][0],
                         table[1][1], table[1][2]);
}

static PyObject *impression_labels(PyObject *module, PyObject *args) {
    PyObject *events, *target_list, *labels;
    double split_at;
    if (!PyArg_ParseTuple(args, "O!O!dO!", &PyList_Type, &events, &PyList_Type, &target_list,
                          &split_at, &PyDict_Type, &labels))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(events);
    if (PyList_GET_SIZE(target_list) != n) Py_RETURN_NONE;
    double *ts = PyMem_Malloc(sizeof(double) * (size_t)(n + 1));
    int *codes = PyMem_Malloc(sizeof(int) * (size_t)(n + 1));
    unsigned char *flags = PyMem_Calloc((size_t)(n + 1), 1);  /* bit 0 clicked, bit 1 followed */
    PyObject *result = NULL, *label_of = NULL, *keys[4] = {NULL, NULL, NULL, NULL};
    long attributed[2][3] = {{0}}, without[2][3] = {{0}}, labelled[2][3] = {{0}};
    if (!ts || !codes || !flags) {
        PyErr_NoMemory();
        goto finally;
    }
    if (!event_columns(events, ts, codes, NULL)) {
        result = Py_None;
        Py_INCREF(result);
        goto finally;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (codes[i] == 0) continue;
        PyObject *t = PyList_GET_ITEM(target_list, i);
        Py_ssize_t impression = PyLong_Check(t) ? PyLong_AsSsize_t(t) : -2;
        if (impression == -1 && PyErr_Occurred()) goto finally;
        if (impression < -1 || impression >= n) {  /* not a target list: the Python path */
            result = Py_None;
            Py_INCREF(result);
            goto finally;
        }
        int is_eval = ts[i] >= split_at;
        if (impression < 0) {
            without[is_eval][codes[i]] += 1;
            continue;
        }
        attributed[is_eval][codes[i]] += 1;
        flags[impression] |= codes[i] == 1 ? 1 : 2;
    }
    for (int k = 0; k < 4; k++) {
        keys[k] = PyTuple_Pack(2, (k & 1) ? Py_True : Py_False, (k & 2) ? Py_True : Py_False);
        if (keys[k] == NULL) goto finally;
    }
    label_of = PyDict_New();
    if (label_of == NULL) goto finally;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!flags[i]) continue;
        int is_eval = ts[i] >= split_at;
        if (flags[i] & 1) labelled[is_eval][1] += 1;
        if (flags[i] & 2) labelled[is_eval][2] += 1;
        PyObject *label = PyDict_GetItemWithError(labels, keys[flags[i]]);
        if (label == NULL) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, keys[flags[i]]);
            goto finally;
        }
        PyObject *index = PyLong_FromSsize_t(i);
        int failed = index == NULL || PyDict_SetItem(label_of, index, label) < 0;
        Py_XDECREF(index);
        if (failed) goto finally;
    }
    PyObject *a = table_list(attributed), *w = table_list(without), *l = table_list(labelled);
    if (a && w && l) result = PyTuple_Pack(4, label_of, a, w, l);
    Py_XDECREF(a);
    Py_XDECREF(w);
    Py_XDECREF(l);
finally:
    PyMem_Free(ts);
    PyMem_Free(codes);
    PyMem_Free(flags);
    Py_XDECREF(label_of);
    for (int k = 0; k < 4; k++) Py_XDECREF(keys[k]);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_events", parse_events, METH_VARARGS, parse_events_doc},
    {"event_loop", event_loop, METH_VARARGS, event_loop_doc},
    {"known_times", known_times, METH_VARARGS, known_times_doc},
    {"train_times", train_times, METH_VARARGS, train_times_doc},
    {"tfrecord_frames", tfrecord_frames, METH_O, tfrecord_frames_doc},
    {"crc32c", crc32c, METH_VARARGS, crc32c_doc},
    {"attribute_by_time", attribute_by_time, METH_VARARGS, attribute_by_time_doc},
    {"impression_labels", impression_labels, METH_VARARGS, impression_labels_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastloops",
    "Compiled per-event loops of the sessionize job (see beam_jobs/compiled.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastloops(void) {
    crc32c_init_table();
    DETECT_CRC32C();
    one = PyLong_FromLong(1);
    if (one == NULL) return NULL;
    return PyModule_Create(&module);
}
