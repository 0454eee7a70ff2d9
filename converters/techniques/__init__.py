"""Compression techniques: one module or folder each, listed in registry.py in the order they run.

Nothing is imported here, so reading a recipe imports no framework; backends load when a technique runs.
"""
