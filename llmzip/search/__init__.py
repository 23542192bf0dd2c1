"""`llmzip compress`: the measured search above the stages (it runs them, as `run` does; stages never import it).

plan.py (config, candidates, cache keys) → compress.py (builds each candidate with the stages, resumable) →
measure.py (bench's code, beside the teacher) → pareto.py (pure selection) → report.py (the Markdown table).
"""
