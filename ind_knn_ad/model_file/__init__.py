"""The model file: its schema (typed settings per method) and its store (versioned, validated,
atomic).
"""
