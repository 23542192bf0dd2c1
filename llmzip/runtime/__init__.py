"""Running models: the one onnxruntime session factory, the causal-LM runners, and the target hardware (CPU classes,
providers)."""
