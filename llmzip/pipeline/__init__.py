"""Verbs that chain the stages into one command: `run` (a YAML recipe, stage after stage). A layer above the stages,
like search/ (`compress`): stages never import each other."""
