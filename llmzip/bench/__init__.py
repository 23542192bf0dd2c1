"""Measuring models side by side: variants, reports, the causal-LM bench, the machine, plots, the onnxruntime-genai
peer."""
