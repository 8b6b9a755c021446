"""Getting images in: files, datasets, the download, sample data, preprocessing, alignment,
batches, atomic writes.
"""
