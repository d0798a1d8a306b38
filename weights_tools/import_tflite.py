"""`import-tflite`: TFLite MobileNet V1, V2 and DeepLabV3-MobileNetV2 flatbuffers -> mobilenet-np HDF5.

    python -m weights_tools import-tflite mobilenet_v2_1.0_224_quant.tflite out.h5 --labels imagenet_labels.txt
    python -m weights_tools import-tflite mobilenet_v2_1.0_224_quant.tflite out.h5 --quantized

Both the TF1 / slim graphs (the published float and uint8 files, DeepLab) and TF2 / Keras graphs (int8
per-channel, QUANTIZE at the ends, PAD + VALID convs, MEAN, FULLY_CONNECTED classifiers) import. The
pieces live in weights_tools/tflite/: reading the file (`graph`), recognising the network and mapping
it onto transformers' modules (`network`), the float state_dict (`float_import`) and the integer
tensors with their quantization (`quantized_import`).

Without --quantized the file becomes the float network (a quantized graph: its float emulation, the
same weights dequantized, float arithmetic), format version 1. With --quantized it keeps the integers
(uint8 / int8 weights, int32 biases, every tensor's scale and zero point; format version 2), and
`mobilenet_np.load` gives the integer network, bit for bit TFLite's reference kernels.

The architecture, width multiplier, input size, output stride (product of the strides; later strides
are dilations) and class count come from the graph; the config is the one whose shapes match
(`importing.fit_config`), and every conv's stride, dilation, groups, activation and wiring (residual
ADDs, the DeepLab head) is checked against the mobilenet_np network built from it.
"""

from __future__ import annotations

from pathlib import Path

from .importing import id2label_or_default, register_import_command, save_imported
from .tflite.float_import import network_tensors, skipped_modules_as_zeros
from .tflite.graph import Graph, dequantize, read_graph
from .tflite.network import (MODEL_CLASSES, SKIPPED, check_structure, conv_from_op, fit_tflite_config,
                             graph_notes, recognise)
from .tflite.quantized_import import quantized_network

__all__ = ["import_tflite", "read_graph", "recognise", "conv_from_op", "dequantize", "Graph", "register"]


def import_tflite(src, out, labels=None, overwrite: bool = False, quantized: bool = False) -> Path:
    """Convert a TFLite MobileNet V1 / V2 / DeepLabV3 file (float or quantized) into a mobilenet-np weights file.

    `labels`: optional text file, one class name per line (see weights_tools/labels.py). `quantized`:
    keep the integer network (the file must be fully quantized). Returns `out`.
    Raises ConversionError (naming the file) for anything else; `out` is written atomically and an
    existing one only replaced with overwrite=True.
    """
    src = Path(src)
    graph = read_graph(src)
    network = recognise(graph)
    tensors = network_tensors(network, graph)
    id2label = id2label_or_default(labels, network.head[-1].weight.shape[0])
    config = fit_tflite_config(network, graph, {k: v.shape for k, v in tensors.items()}, id2label)
    model_class = MODEL_CLASSES[network.family]
    model = model_class(config, seed=None)
    padding_differs = check_structure(network, graph, model)
    notes = graph_notes(network, graph)
    if labels is not None:
        notes["labels_file"] = Path(labels).name
    if quantized:
        integer_tensors, quantization = quantized_network(network, graph, model)
        notes["numerics"] = ("integer: TFLite's reference kernels (mobilenet_np/quantized), weights and biases "
                             "as stored in the graph")
        if padding_differs:
            notes["padding"] = "as the graph pads (PAD + VALID): " + "; ".join(padding_differs)
        return save_imported(out, model_class, config, integer_tensors, source=src,
                             converter="weights_tools.import_tflite", notes=notes, overwrite=overwrite,
                             quantization=quantization)
    if padding_differs:
        notes["padding"] = ("TF 'SAME' (tf_padding) where the graph pads differently (PAD + VALID), so the float "
                            "network differs from the graph there: " + "; ".join(padding_differs))
    tensors.update(skipped_modules_as_zeros(model, SKIPPED.get(network.family, ()), config.layer_norm_eps))
    return save_imported(out, model_class, config, tensors, source=src, converter="weights_tools.import_tflite",
                         notes=notes, overwrite=overwrite)


def register(subparsers) -> None:
    register_import_command(subparsers, "import-tflite", import_tflite,
                            "TFLite MobileNet V1/V2 or DeepLabV3-MobileNetV2 files (float or quantized)",
                            "a .tflite MobileNet V1, MobileNet V2 or DeepLabV3 MobileNetV2 flatbuffer",
                            quantized_flag=True)
