"""Export to other runtimes: standard ONNX (QDQ or QOperator) that runs in ONNX Runtime (`onnx.py`),
built from the graph (`graph.py`), per-layer emitters (`layers.py`, `ops.py`), and the latency
comparison behind `nncompress bench` (`bench.py`)."""
