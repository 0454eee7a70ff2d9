"""Importers, compression passes and exporters behind the SDK.

Heavy frameworks (TensorFlow, tfmot) are imported on first use, not here.
"""
