"""Builds the Cython kernels in kernels/*.pyx and the estimator's search objective
energy/_objective.pyx (everything else is in pyproject.toml).

JOULECUT_PORTABLE=1 builds without -march=native, for wheels that must run on other CPUs.
"""
from __future__ import annotations

import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def _compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/O2", "/openmp"]
    args = ["-O3", "-fopenmp", "-ffast-math", "-fno-math-errno"]
    if os.environ.get("JOULECUT_PORTABLE") != "1":
        # -march=native alone picks 256-bit vectors on this CPU; ask for 512 where it has AVX-512.
        args += ["-march=native", "-mprefer-vector-width=512"]
    return args


def _extensions() -> list[Extension]:
    link = [] if sys.platform == "win32" else ["-fopenmp"]
    return [
        Extension(
            "kernels." + os.path.splitext(os.path.basename(path))[0],
            [path],
            include_dirs=[numpy.get_include(), "kernels"],
            extra_compile_args=_compile_args(),
            extra_link_args=link,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for path in sorted(glob.glob("kernels/*.pyx"))
    ] + [
        # Must return the very doubles NumPy computes (tests/test_estimator_objective.py): no
        # -ffast-math, no FMA contraction, no -march=native.
        Extension(
            "energy._objective",
            ["energy/_objective.pyx"],
            include_dirs=[numpy.get_include()],
            extra_compile_args=[] if sys.platform == "win32" else ["-O2", "-ffp-contract=off", "-fno-fast-math"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
    ]


setup(ext_modules=cythonize(_extensions(), language_level=3, quiet=True) if _extensions() else [])
