"""Build the ``primes`` extension with makejobs' build_ext (see the Makefile)."""

from setuptools import Extension, setup

from makejobs.setuptools import build_ext

setup(
    name="primes-example",
    version="0",
    ext_modules=[
        Extension(
            "primes",
            sources=["src/module.c", "src/sieve.c", "src/isqrt.c", "src/bits.c"],
            depends=["src/primes.h"],
        )
    ],
    # The one line that changes: compile every file as a job on the jobserver pool.
    cmdclass={"build_ext": build_ext},
)
