"""The preset dictionary of compact headers (.nnc 3.3; docs/format.md "Compact header").

zlib can start a stream from a preset dictionary (RFC 1950 sec. 2.2, FDICT): text the stream repeats
from the dictionary costs a back-reference (a few bits) instead of its letters. Most of a small
file's header is the same keys in every file (`"chain":[{"kind":"mask","meta":{"shape":...`,
`"codec":{"name":"huffman","min":0,...`), so with a dictionary that holds them a LeNet-5 header
shrinks from about 1.1 kB to under 0.5 kB (7% of a 10 kB file at 170x; tests/encode).

The dictionary is part of the format: `DICTIONARY` are the bytes of `header.dict` beside this module,
fixed by the spec through their Adler-32 (`DICTIONARY_ADLER32`, the DICTID of every compact header's
zlib stream) and SHA-256. They were made by `build_dictionary` in tests/encode/test_compact_header.py,
which checks that it still makes exactly these bytes: the compact JSON headers of small synthetic
models (random weights, shapes unlike the zoo's) through the transforms and codecs the writer uses
most, the most common last (zlib reaches the end of a dictionary with the shortest distances). This
module stays a leaf (it only reads the bytes), so every reader can import it.
"""
from __future__ import annotations

import zlib
from pathlib import Path

DICTIONARY_PATH = Path(__file__).with_name("header.dict")
DICTIONARY = DICTIONARY_PATH.read_bytes()
DICTIONARY_ADLER32 = zlib.adler32(DICTIONARY)
