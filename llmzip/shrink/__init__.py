"""Making the student smaller before and while it learns: layer subsets, KD losses and trainer, pruning, low-rank
layers, embedding compression, the teacher-output cache."""
