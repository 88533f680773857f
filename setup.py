"""Builds lionk's native library (the fused CPU step) at install time; everything else is in pyproject.toml.

The library is optional: without a C compiler lionk still installs, runs its plain paths, and says why the fused
CPU path is missing (``lionk.fused_unavailable_reason()``). It is compiled for the architecture's baseline, so a
wheel runs on any machine of that architecture; on x86-64 it also carries AVX2 and AVX-512 copies of the step and
picks the best one the CPU supports when it is loaded. ``-ffp-contract=off`` keeps every multiply and add rounded
as torch rounds them (no fused multiply-add), which the bitwise tests against the reference path rely on.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

GCC_FLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]


class BuildNative(build_ext):
    """build_ext with the step's compiler flags for the compiler at hand."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "msvc":
            ext.extra_compile_args = ["/O2", "/fp:precise"]
        else:
            ext.extra_compile_args = GCC_FLAGS
        super().build_extension(ext)


native = Extension(
    "lionk._native",
    sources=["src/lionk/_engine/native.c"],
    depends=["src/lionk/_engine/native_pipeline.h"],
    libraries=[] if sys.platform == "win32" else ["m"],
    optional=True,  # no compiler: lionk installs without it and reports why
)

setup(ext_modules=[native], cmdclass={"build_ext": BuildNative})
