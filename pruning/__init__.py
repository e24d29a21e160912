"""Energy-aware pruning, pruning to an energy budget, sparse training and ONNX export."""
