"""The C sources of a generated extension module, for the builds that test or measure build_ext.

An extension *name* is *parts* helper files, ``part0.c``, ``part1.c``... (numbered with
as many digits as *parts* needs, so that they sort in order), and ``module.c``. Each
helper defines ``long partI(void)``, returning I + 1, and *functions* loops that give
the optimiser work (about 10 ms of compiling each at -O3); the module's ``total()``
returns the sum of every ``partI()``, so importing the built module and calling it
checks that every object was linked. Only the standard library is imported here:
``benchmarks/build_ext.py`` uses this module too.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["module_source", "part_name", "part_source", "write_sources"]

MODULE = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>
{declarations}
static PyObject *total(PyObject *self, PyObject *args) {{ return PyLong_FromLong({calls}); }}
static PyMethodDef methods[] = {{{{"total", total, METH_NOARGS, ""}}, {{NULL, NULL, 0, NULL}}}};
static struct PyModuleDef module = {{PyModuleDef_HEAD_INIT, "{name}", NULL, -1, methods}};
PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&module); }}
"""

# Loops the optimiser works on.
FUNCTION = """\
double work{i}_{k}(double *a, int n) {{
    double s = 0;
    for (int j = 0; j < n; j++) {{
        s += a[j] * {k}.5 - a[j] / (j + {k} + 2);
        if (s > {k}) s -= a[j];
    }}
    for (int j = n - 1; j > 0; j--) a[j] = a[j - 1] * s + {k};
    return s;
}}
"""


def part_name(i: int, parts: int) -> str:
    """The file name of helper *i* of *parts*."""
    return f"part{i:0{len(str(max(parts - 1, 0)))}d}.c"


def part_source(i: int, functions: int = 0) -> str:
    """Helper *i*: ``long partI(void)`` and *functions* loops."""
    body = "".join(FUNCTION.format(i=i, k=k) for k in range(functions))
    return f"long part{i}(void) {{ return {i + 1}; }}\n{body}"


def module_source(name: str, parts: int) -> str:
    """The module init of extension *name*, whose ``total()`` sums *parts* helpers."""
    return MODULE.format(
        name=name,
        declarations="\n".join(f"long part{i}(void);" for i in range(parts)),
        calls=" + ".join(f"part{i}()" for i in range(parts)) or "0",
    )


def write_sources(src: Path, name: str, parts: int, functions: int = 0) -> None:
    """Create *src* with the helpers and the module init of extension *name*."""
    src.mkdir(parents=True)
    for i in range(parts):
        (src / part_name(i, parts)).write_text(part_source(i, functions))
    (src / "module.c").write_text(module_source(name, parts))
