#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "primes.h"

static PyObject *count(PyObject *self, PyObject *args) {
    Py_ssize_t below;
    if (!PyArg_ParseTuple(args, "n", &below))
        return NULL;
    return PyLong_FromSize_t(below > 0 ? sieve_count((size_t)below) : 0);
}

static PyMethodDef methods[] = {
    {"count", count, METH_VARARGS, "count(n): the number of primes below n."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "primes", NULL, -1, methods};

PyMODINIT_FUNC PyInit_primes(void) { return PyModule_Create(&module); }
