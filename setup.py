"""Build hook for our C kernels (src/nncompress/runtime/_*.c: the XNOR + popcount GEMM, the per-token
int8 quantization); metadata is in pyproject.toml.

The kernels are plain C (no Python or torch headers, loaded with ctypes by runtime/native.py),
compiled for the baseline x86-64 ISA with AVX2 / AVX-512 paths chosen at run time. They are optional:
without a C compiler the package installs anyway, `runtime.native` then tries to compile each on
first use, the pure-torch paths stay, and the kernels' tests skip with the reason.
"""
import importlib.util
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_spec = importlib.util.spec_from_file_location("native", Path(__file__).parent / "src/nncompress/runtime/native.py")
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)  # the loader's flags and source hashes (stdlib only)


class OptionalBuildExt(build_ext):
    """Build the kernel if a C compiler works; otherwise warn and install without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - no compiler / headers: the pure-Python package still works
            self.warn(f"nncompress: the C kernels were not built ({err}); the runtime will try again on first use")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001
            self.warn(f"nncompress: kernel {ext.name} was not built ({err}); the runtime will try again on first use")


KERNELS = ["_xnor", "_int8_rows"]

setup(
    ext_modules=[Extension(f"nncompress.runtime.{name}", [f"src/nncompress/runtime/{name}.c"],
                           define_macros=[("NNC_SOURCE_HASH", native.hash_define(name))],
                           extra_compile_args=native.flags(name), extra_link_args=["-pthread", *native.KERNEL_FLAGS.get(name, [])],
                           optional=True)
                 for name in KERNELS],
    cmdclass={"build_ext": OptionalBuildExt},
)
