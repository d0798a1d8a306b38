"""Integer networks: a float network's Graph run with TensorFlow Lite's reference integer kernels.

An integer weights file (`import-tflite --quantized`, format version 2, docs/weights_format.md) holds
uint8 / int8 weights, int32 biases and the quantization (scale, zero point, the TFLite op and its
options) of every tensor, keyed by transformers names. `QuantizedModel` reads the same layer
descriptions as the float network (mobilenet_np/layers.py: the `Graph` of ConvLayer / InvertedResidual
/ ImagePoolingASPP / Dropout units) and runs each with the integer ops of `quantized.ops`:

    ConvLayer         [PAD (Keras)] -> CONV_2D or DEPTHWISE_CONV_2D with fused activation
    InvertedResidual  expand -> depthwise -> project [-> ADD of the block input]
    ImagePoolingASPP  AVERAGE_POOL_2D -> conv_pool -> RESIZE_BILINEAR [-> QUANTIZE] | conv_aspp [-> QUANTIZE]
                      -> CONCATENATION -> conv_projection
    Dropout           nothing (the identity at inference)
    pool, classifier  AVERAGE_POOL_2D or MEAN -> CONV_2D 1x1 or FULLY_CONNECTED -> SOFTMAX [-> QUANTIZE]
    DeepLab's tail    RESIZE_BILINEAR of the logits (to the feature map, then to the input) -> ARG_MAX

Every op computes what LiteRT's BUILTIN_REF kernels compute, bit for bit (tests/test_quantized_networks.py
compares every intermediate tensor). `record(name, codes)` receives each integer tensor (NCHW) under the
name of its quantization record: the transformers module path that computes it, or the names the
importer gives TFLite's extra ops (weights_tools/tflite/quantized_import.py lists them).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError, WeightsError
from ..fast import blas_on_one_thread
from ..formats.weights import TensorQuantization, WeightsFile
from ..layers import ConvLayer, Dropout, Graph, ImagePoolingASPP, InvertedResidual, Recorder, no_record
from ..outputs import ModelOutput
from ..registry import ARCHITECTURES
from . import ops
from .fixedpoint import QuantParams


@dataclasses.dataclass
class QuantizedClassifierOutput(ModelOutput):
    logits: np.ndarray = None                    # (N, num_labels) float32: quantized_logits dequantized
    quantized_logits: np.ndarray = None          # (N, num_labels) the codes the graph feeds to its SOFTMAX
    quantized_probabilities: np.ndarray = None   # (N, num_labels) the SOFTMAX output codes (scale 1/256)
    probabilities: np.ndarray = None             # (N, num_labels) float32: quantized_probabilities dequantized


@dataclasses.dataclass
class QuantizedSegmenterOutput(ModelOutput):
    logits: np.ndarray = None                    # (N, num_labels, h, w) float32: quantized_logits dequantized
    quantized_logits: np.ndarray = None          # (N, num_labels, h, w) the codes fed to the final RESIZE_BILINEAR
    labels: np.ndarray = None                    # (N, H, W) the graph's own resize + ARG_MAX at the input size


@dataclasses.dataclass
class Codes:
    """An integer tensor (NCHW codes) with its quantization."""

    values: np.ndarray
    params: QuantParams


def quant_params(q: TensorQuantization) -> QuantParams:
    return QuantParams(q.scale, q.zero_point, q.axis)


class QuantizedModel:
    """The integer network of an integer weights file, built from the float network's layer descriptions.

    `architecture` is the transformers class of the float network (registry.ARCHITECTURES), `graph`
    its Graph, `tensors` the integer weights and biases, `quantization` the records of every tensor.
    """

    numerics = "integer"
    # Convolutions may be split by output channels over this many threads (NumPy's matrix products and
    # ufuncs release the GIL; every channel's codes are computed exactly as in one piece). BLAS itself runs
    # on one thread during a call: its spinning thread pool made the many small products 2-3x slower.
    threads: int = 1
    SPLIT_MIN_OUTPUTS = 1 << 16          # smaller convs run in one piece (thread hand-off costs more)
    _pool: ThreadPoolExecutor | None = None

    def __init__(self, architecture: str, config, graph: Graph, tensors: dict[str, np.ndarray],
                 quantization: dict[str, TensorQuantization], source: str = "QuantizedModel"):
        self.architecture = architecture
        self.task = ARCHITECTURES[architecture].task
        self.config = config
        self.graph = graph
        self.tensors = dict(tensors)
        self.quantization = dict(quantization)
        self.source = source
        self.metadata: dict[str, Any] = {}
        self.structure = None        # the float model whose layer descriptions these are (from_weights_file)
        self.params = {name: self._params(name, q) for name, q in self.quantization.items()}
        self._check()

    @classmethod
    def from_weights_file(cls, float_class: type, weights: WeightsFile) -> "QuantizedModel":
        """The integer network of `weights` (numerics "integer"), on the graph of `float_class` built from its config."""
        try:
            config = float_class.config_class.from_dict(weights.config)
        except ConfigError as e:
            raise WeightsError(f"{weights.path}: {e}") from None
        structure = float_class(config, seed=None)          # the layer descriptions only, no weights
        model = cls(weights.architecture, config, structure.graph(), weights.tensors, weights.quantization,
                    source=str(weights.path))
        model.structure = structure
        model.metadata = {"path": str(weights.path), "architecture": weights.architecture, "numerics": "integer",
                          "image_processor": weights.image_processor, "provenance": weights.provenance}
        return model

    # -- checks ---------------------------------------------------------------------------------------
    def _params(self, name: str, q: TensorQuantization) -> QuantParams:
        try:
            return quant_params(q)
        except ShapeError as e:
            raise WeightsError(f"{self.source}: quantization of {name}: {e}") from None

    def _need(self, name: str) -> TensorQuantization:
        if name not in self.quantization:
            raise WeightsError(f"{self.source}: no quantization record for {name} (the integer network needs it)")
        return self.quantization[name]

    def _check_weights(self, key: str, shape: tuple[int, ...]) -> None:
        for part, dtypes in (("weight", ("uint8", "int8")), ("bias", ("int32",))):
            name = f"{key}.{part}"
            record = self._need(name)
            value = self.tensors.get(name)
            expected = shape if part == "weight" else shape[:1]
            if value is None or tuple(value.shape) != tuple(expected) or str(value.dtype) not in dtypes \
                    or record.dtype != str(value.dtype):
                got = "missing" if value is None else f"{value.dtype} {value.shape}"
                raise WeightsError(f"{self.source}: integer tensor {name} is {got}, expected {'/'.join(dtypes)} "
                                   f"{tuple(expected)} as its record says ({record.dtype})")
            try:
                self.params[name].check("QuantizedModel", name, value.shape, allow_per_channel=True)
            except ShapeError as e:
                raise WeightsError(f"{self.source}: {e}") from None

    def _check(self) -> None:
        """Every weight, bias and activation record the graph's units need, with fitting shapes."""
        self._need("pixel_values")
        for layer in self.conv_layers():
            self._need(layer.name)
            k = layer.kernel_size
            self._check_weights(f"{layer.name}.convolution", (layer.out_channels, layer.in_channels // layer.groups, k, k))
        for unit in self.graph.units:
            if isinstance(unit, InvertedResidual) and unit.use_residual:
                self._need(unit.name)
            if isinstance(unit, ImagePoolingASPP):
                for name in (f"{unit.name}.avg_pool", f"{unit.conv_pool.name}.resize", f"{unit.name}.concat"):
                    self._need(name)
        if self.graph.classifier is not None:
            self._need(self.graph.pool)
            self._need(self.graph.classifier)
            self._check_weights(self.graph.classifier, (self.config.num_labels, self.graph.units[-1].out_channels
                                                        if isinstance(self.graph.units[-1], ConvLayer)
                                                        else self.graph.units[-1].reduce_1x1.out_channels))

    def conv_layers(self) -> list[ConvLayer]:
        """Every ConvLayer the integer network runs (the graph's units; not its unused ones)."""
        layers = []
        for unit in self.graph.units:
            if isinstance(unit, ConvLayer):
                layers.append(unit)
            elif isinstance(unit, (InvertedResidual, ImagePoolingASPP)):
                layers += unit.conv_layers()
        return layers

    # -- the ops ---------------------------------------------------------------------------------------
    def conv(self, layer: ConvLayer, x: Codes, record: Recorder) -> Codes:
        """[PAD ->] CONV_2D / DEPTHWISE_CONV_2D with the layer's stride and dilation and the graph's padding."""
        name = layer.name
        if f"{name}.pad" in self.quantization:
            top, bottom, left, right = self.quantization[f"{name}.pad"].options["paddings"]
            params = self.params[f"{name}.pad"]
            x = Codes(ops.pad(x.values, ((0, 0), (0, 0), (top, bottom), (left, right)), params), params)
            record(f"{name}.pad", x.values)
        options, params = self.quantization[name].options, self.params[name]
        depthwise = layer.kind == "depthwise"
        op = ops.depthwise_conv2d if depthwise else ops.conv2d
        key = f"{name}.convolution"
        weight, bias, w_params = self.tensors[f"{key}.weight"], self.tensors[f"{key}.bias"], self.params[f"{key}.weight"]
        kwargs = dict(stride=layer.stride, padding=options["padding"], dilation=layer.dilation,
                      activation=options["activation"])
        n, _, h, w = x.values.shape
        c_out = weight.shape[0]
        if self.threads < 2 or n * c_out * h * w // layer.stride ** 2 < self.SPLIT_MIN_OUTPUTS or c_out < 2 * self.threads:
            y = op(x.values, weight, bias, x.params, w_params, params, **kwargs)
        else:   # output channels [a, b) of a conv are the conv with weights [a, b) (depthwise: of inputs [a/dm, b/dm))
            dm = c_out // x.values.shape[1] if depthwise else 1
            step = -(-c_out // (self.threads * dm)) * dm
            parts = []
            for first in range(0, c_out, step):
                part = slice(first, min(first + step, c_out))
                part_params = w_params if not w_params.per_channel else QuantParams(
                    w_params.scale[part], w_params.zero_point[part], 0)
                source = x.values[:, first // dm: part.stop // dm] if depthwise else x.values
                parts.append((source, weight[part], bias[part], part_params))
            if self._pool is None:
                QuantizedModel._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="quantized")
            y = np.concatenate(list(self._pool.map(
                lambda a: op(a[0], a[1], a[2], x.params, a[3], params, **kwargs), parts)), axis=1)
        record(name, y)
        return Codes(y, params)

    def residual_block(self, block: InvertedResidual, x: Codes, record: Recorder) -> Codes:
        y = x
        for layer in block.conv_layers():
            y = self.conv(layer, y, record)
        if block.use_residual:
            params = self.params[block.name]
            y = Codes(ops.add(y.values, x.values, y.params, x.params, params,
                              self.quantization[block.name].options.get("activation", "none")), params)
        record(block.name, y.values)
        return y

    def global_pool(self, name: str, x: Codes, record: Recorder) -> Codes:
        """AVERAGE_POOL_2D over the whole map (on raw codes) or MEAN over H, W: (N, C, h, w) -> (N, C, 1, 1)."""
        q, params = self.quantization[name], self.params[name]
        if q.op == "MEAN":
            y = ops.mean(x.values, x.params, params, axis=(2, 3), keepdims=True)
        else:
            y = ops.average_pool2d(x.values, x.params, kernel_size=x.values.shape[2:], stride=1, padding="valid",
                                   activation=q.options.get("activation", "none"))
        record(name, y)
        return Codes(y, params)

    def requantized(self, name: str, x: Codes, record: Recorder) -> Codes:
        """The QUANTIZE (requantization) the converter put after `name`, if there is one."""
        if f"{name}.requantize" not in self.quantization:
            return x
        q, params = self.quantization[f"{name}.requantize"], self.params[f"{name}.requantize"]
        y = ops.requantize(x.values, x.params, params, q.dtype)
        record(f"{name}.requantize", y)
        return Codes(y, params)

    def resize(self, name: str, x: Codes, size: tuple[int, int], record: Recorder) -> Codes:
        options = self.quantization[name].options
        y = ops.resize_bilinear(x.values, size, options["align_corners"], options["half_pixel_centers"])
        record(name, y)
        return Codes(y, self.params[name])

    def deeplab_head(self, head: ImagePoolingASPP, features: Codes, record: Recorder) -> Codes:
        size = features.values.shape[2:]
        pooled = self.global_pool(f"{head.name}.avg_pool", features, record)         # (N, C, 1, 1)
        pooled = self.conv(head.conv_pool, pooled, record)                          # (N, 256, 1, 1)
        pooled = self.resize(f"{head.conv_pool.name}.resize", pooled, size, record)  # (N, 256, h, w)
        pooled = self.requantized(f"{head.conv_pool.name}.resize", pooled, record)
        aspp = self.requantized(head.conv_aspp.name, self.conv(head.conv_aspp, features, record), record)
        params = self.params[f"{head.name}.concat"]
        x = ops.concatenation([pooled.values, aspp.values], [pooled.params, aspp.params], params, axis=1)
        record(f"{head.name}.concat", x)                                            # transformers' order [pool, aspp]
        return self.conv(head.conv_projection, Codes(x, params), record)

    def input_codes(self, pixel_values, record: Recorder) -> Codes:
        """Float pixel values quantized as TFLite's QUANTIZE does, or codes of the input's dtype as they are."""
        q = self.quantization["pixel_values"]
        x = np.asarray(pixel_values)
        channels = self.config.num_channels
        if x.ndim != 4 or x.shape[1] != channels or 0 in x.shape:
            raise ShapeError(f"pixel_values must have shape (N, {channels}, H, W), got {x.shape}")
        if x.dtype.kind == "f":
            x = ops.quantize(x, self.params["pixel_values"], q.dtype)
        elif x.dtype != np.dtype(q.dtype):
            raise ShapeError(f"pixel_values must be float pixel values or {q.dtype} codes (the input tensor's "
                             f"dtype), got dtype {x.dtype}")
        record("pixel_values", x)
        codes = Codes(x, self.params["pixel_values"])
        if "pixel_values.quantize" in self.quantization:
            rq = self.quantization["pixel_values.quantize"]
            codes = Codes(ops.requantize(x, codes.params, self.params["pixel_values.quantize"], rq.dtype),
                          self.params["pixel_values.quantize"])
            record("pixel_values.quantize", codes.values)
        return codes

    # -- running ----------------------------------------------------------------------------------------
    def recorded_quantization(self) -> dict[str, TensorQuantization]:
        """The quantization of every tensor `record` receives: the records, plus each block without a residual
        ADD under its own name (its codes are its last conv's)."""
        table = dict(self.quantization)
        for unit in self.graph.units:
            if isinstance(unit, InvertedResidual) and unit.name not in table:
                table[unit.name] = table[unit.reduce_1x1.name]
        return table

    def __call__(self, pixel_values, record: Recorder | None = None):
        """Run the integer network on (N, C, H, W) float pixel values or integer codes of the input's dtype.

        Classifiers return logits, quantized_logits, quantized_probabilities, probabilities;
        DeepLab returns logits, quantized_logits, labels (see the output classes above)."""
        record = no_record if record is None else record
        with blas_on_one_thread():
            return self._run(pixel_values, record)

    def _run(self, pixel_values, record: Recorder):
        x = self.input_codes(pixel_values, record)
        height, width = x.values.shape[2:]
        for unit in self.graph.units:
            if isinstance(unit, Dropout):
                continue
            if isinstance(unit, InvertedResidual):
                x = self.residual_block(unit, x, record)
            elif isinstance(unit, ImagePoolingASPP):
                x = self.deeplab_head(unit, x, record)
            else:
                x = self.conv(unit, x, record)
        if self.task == "semantic-segmentation":
            return self.segmentation_tail(x, (height, width), record)
        return self.classification_tail(x, record)

    def classification_tail(self, features: Codes, record: Recorder) -> QuantizedClassifierOutput:
        pooled = self.global_pool(self.graph.pool, features, record)                # (N, C, 1, 1)
        q, params = self.quantization["classifier"], self.params["classifier"]
        weight, bias = self.tensors["classifier.weight"], self.tensors["classifier.bias"]
        n = pooled.values.shape[0]
        if q.op == "FULLY_CONNECTED":
            logits = ops.fully_connected(pooled.values.reshape(n, -1), weight, bias, pooled.params,
                                         self.params["classifier.weight"], params, q.options["activation"])
        else:   # a 1x1 CONV_2D, then RESHAPE to (N, classes)
            logits = ops.conv2d(pooled.values, weight[:, :, None, None], bias, pooled.params,
                                self.params["classifier.weight"], params, padding=q.options.get("padding", "valid"),
                                activation=q.options["activation"]).reshape(n, -1)
        record("classifier", logits)
        output = QuantizedClassifierOutput(logits=ops.dequantize(logits, params), quantized_logits=logits)
        if "probabilities" in self.quantization:
            p = self.params["probabilities"]
            probabilities = ops.softmax(logits, params, self.quantization["probabilities"].options.get("beta", 1.0))
            record("probabilities", probabilities)
            output.quantized_probabilities = probabilities
            output.probabilities = ops.dequantize(probabilities, p)
            if "probabilities.quantize" in self.quantization:
                rq = self.quantization["probabilities.quantize"]
                record("probabilities.quantize", ops.requantize(probabilities, p, self.params["probabilities.quantize"],
                                                                rq.dtype))
        return output

    def segmentation_tail(self, logits: Codes, input_size: tuple[int, int], record: Recorder) -> QuantizedSegmenterOutput:
        feature_size = logits.values.shape[2:]
        x, n = logits, 0
        while f"segmentation_head.upsample.{n}" in self.quantization:
            name = f"segmentation_head.upsample.{n}"
            target = self.quantization[name].options["target"]
            if target == "input":
                break
            x = self.resize(name, x, feature_size, record)
            n += 1
        output = QuantizedSegmenterOutput(logits=ops.dequantize(x.values, x.params), quantized_logits=x.values)
        name = f"segmentation_head.upsample.{n}"
        if name in self.quantization:
            x = self.resize(name, x, input_size, record)
            if "segmentation_head.argmax" in self.quantization:
                q = self.quantization["segmentation_head.argmax"]
                output.labels = ops.arg_max(x.values, axis=1, output_dtype=q.dtype)
                record("segmentation_head.argmax", output.labels)
        return output
