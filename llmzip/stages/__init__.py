"""One module per pipeline stage: finetune → distill → calibrate → quantize → export → bench (+ run)."""
