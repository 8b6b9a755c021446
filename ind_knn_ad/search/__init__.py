"""Nearest-neighbour search over a memory bank (exact, pruned) and the coreset samplers."""
