"""ONNX importer, graph IR and dataflow energy estimator. Never imports torch."""
