"""Checkpoint conversion for mobilenet-np: transformers, Keras and TFLite files in, HDF5 weights out.

Unlike the `mobilenet_np` runtime, these tools may use safetensors, torch, huggingface_hub and a
TFLite schema library (the `convert` extra). Run them as `python -m weights_tools COMMAND ...`.
"""

__version__ = "0.1.0"
