"""Model sources beyond a safetensors folder: GGUF files (recognised, checked, their blocks kept exactly)."""
