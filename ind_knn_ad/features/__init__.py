"""Patch features: the backbone registry, the patch maker (borders), the torch extractor,
augmentation.
"""
