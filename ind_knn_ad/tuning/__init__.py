"""Fit settings chosen from good images: pose statistics and the automatic settings."""
