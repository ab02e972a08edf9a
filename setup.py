"""Builds the Cython extensions of lockgate.fastpath; all other metadata is in pyproject.toml."""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("LOCKGATE_CYTHON_DEBUG") == "1"

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(
        f"lockgate.fastpath.{name}",
        [f"fastpath/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # No FMA contraction: results stay bit-identical to the numpy twins.
        extra_compile_args=(["-O0", "-g"] if DEBUG else ["-O3"]) + ["-ffp-contract=off"],
    )
    for name in ("_codec", "_assemble", "_canonical")
] + [
    # Links the system's SQLite, the library the interpreter's sqlite3 module loads. Optional: where
    # it cannot be built, the twin (the sqlite3 module) is used.
    Extension(
        "lockgate.fastpath._sqlite_group",
        ["fastpath/_sqlite_group.pyx"],
        libraries=["sqlite3"],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3"],
        optional=True,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=DEBUG))
