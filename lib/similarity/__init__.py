"""Similarity functions: (images, captions) token embeddings -> (n_images, n_captions) pair scores.

`xdim` is the fast X-Dim kernel; `reference` writes the same equations out step by step.
"""
