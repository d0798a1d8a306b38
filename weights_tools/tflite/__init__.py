"""TFLite flatbuffers -> mobilenet-np weights: `graph` (reading the file), `network` (recognising MobileNet
V1 / V2 / DeepLabV3 and mapping it onto transformers' modules), `float_import` (the float state_dict) and
`quantized_import` (the integer tensors and their quantization). The command is weights_tools/import_tflite.py.
"""
