"""Writing and checking ONNX graphs: the classifier export, graph rewrites, the saturation check, the causal-LM export
and its fused decoder graph."""
