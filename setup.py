"""Build hook for the XNOR + popcount kernel (src/nncompress/runtime/_xnor.c); metadata is in pyproject.toml.

The kernel is plain C (no Python or torch headers, loaded with ctypes), compiled for the baseline
x86-64 ISA with AVX2 / AVX-512 paths chosen at run time. It is optional: without a C compiler the
package installs anyway, `nncompress.runtime.xnor` then tries to compile it on first use, and the
kernel's tests skip with the reason.
"""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the kernel if a C compiler works; otherwise warn and install without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - no compiler / headers: the pure-Python package still works
            self.warn(f"nncompress: the XNOR kernel was not built ({err}); the runtime will try again on first use")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001
            self.warn(f"nncompress: the XNOR kernel was not built ({err}); the runtime will try again on first use")


setup(
    ext_modules=[Extension("nncompress.runtime._xnor", ["src/nncompress/runtime/_xnor.c"],
                           extra_compile_args=["-O3", "-std=gnu11", "-pthread"], extra_link_args=["-pthread"],
                           optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
