"""Benchmarks behind `make bench-*`: commands that print and write measured numbers, never tests."""
