"""The C kernel loader (runtime/native.py): compiles a kernel into the cache when no build is
installed (or the installed one is older than its source), and reports why when it cannot."""
import os
import shutil

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


def test_an_installed_build_older_than_its_source_is_skipped(monkeypatch, tmp_path):
    source = tmp_path / "_k.c"
    built = tmp_path / "_k.so"
    built.write_bytes(b"")
    source.write_text("int f(void) { return 1; }\n")
    monkeypatch.setattr(native, "HERE", tmp_path)
    monkeypatch.setattr(native, "_built_library", lambda name: built)
    os.utime(built, (1, 1))
    assert built not in native._candidates("_k")
    os.utime(built, None)
    os.utime(source, (1, 1))
    assert native._candidates("_k")[0] == built
