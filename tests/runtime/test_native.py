"""The C kernel loader (runtime/native.py): compiles a kernel into the cache when no build is
installed (or the installed one is older than its source), and reports why when it cannot."""
import ctypes
import shutil
import subprocess

import pytest

from nncompress.runtime import int8_rows, native


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native, "_status", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_built_library", lambda name: None)
    return tmp_path


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_a_kernel_without_an_installed_build_is_compiled_into_the_cache(fresh_loader):
    library = native.load(int8_rows.NAME, int8_rows._declare)
    assert library is not None
    path = native.status(int8_rows.NAME)["library"]
    assert path.startswith(str(fresh_loader / "nncompress")) and path.endswith(".so")
    assert native.load(int8_rows.NAME, int8_rows._declare) is library  # loaded once


def test_without_a_compiler_the_reason_is_reported(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_loader / "no-such-compiler"))
    assert native.load(int8_rows.NAME, int8_rows._declare) is None
    assert "no-such-compiler" in native.status(int8_rows.NAME)["reason"]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_a_build_of_another_source_is_refused_and_rebuilt(fresh_loader, monkeypatch):
    """An installed library whose embedded hash is not the source's (an edited checkout, an older
    version) is never loaded: the cache entry of the current source is compiled instead."""
    stale = fresh_loader / "_int8_rows.so"
    compiler = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([compiler, *native.flags(int8_rows.NAME), '-DNNC_SOURCE_HASH="0123456789abcdef"', "-shared", "-fPIC",
                    str(native.source(int8_rows.NAME)), "-o", str(stale)], check=True)
    monkeypatch.setattr(native, "_built_library", lambda name: stale)
    assert native.load(int8_rows.NAME, int8_rows._declare) is not None
    assert native.status(int8_rows.NAME)["library"] != str(stale)
    assert native.digest(int8_rows.NAME) in native.status(int8_rows.NAME)["library"]


def test_the_loaded_kernels_carry_their_source_hash():
    from nncompress.runtime import xnor
    for name, load in (("_xnor", xnor.load_kernel), (int8_rows.NAME, int8_rows.available)):
        load()
        path = native.status(name).get("library")
        if path is not None:
            library = ctypes.CDLL(path)
            library.nnc_source_hash.restype = ctypes.c_char_p
            assert library.nnc_source_hash().decode() == native.digest(name)
