"""The pieces the three networks share: the conv layer, the output objects and the model base class.

A network here is a list of layer descriptions (built from the config, see the network files) plus
one flat dict of weights, `model.params`, keyed exactly like the transformers state_dict
(e.g. "mobilenet_v2.layer.3.conv_3x3.convolution.weight"). Nothing is hidden in objects: a layer
reads its weights from that dict by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from . import ops
from .errors import ShapeError, WeightsError

# record(name, tensor) is called with every intermediate tensor when a caller asks for it (golden
# references, notebooks); `name` is the transformers module path that produced the tensor.
Recorder = Callable[[str, np.ndarray], None]


def no_record(name: str, tensor: np.ndarray) -> None:
    pass


ACTIVATIONS = {"relu": ops.relu, "relu6": ops.relu6}


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One transformers `MobileNetV*ConvLayer`: [TF "SAME" pad] -> conv -> [BatchNorm] -> [activation].

    `name` is the state_dict prefix, e.g. "mobilenet_v2.layer.3.conv_3x3"; its weights are
    `{name}.convolution.weight` (C_out, C_in / groups, k, k), optionally `{name}.convolution.bias`,
    and, with BatchNorm, `{name}.normalization.{weight,bias,running_mean,running_var,num_batches_tracked}`.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = False
    norm_eps: float | None = 1e-3    # None: no BatchNorm
    activation: str | None = "relu6"  # "relu6", "relu" or None (a linear layer)
    tf_padding: bool = True

    @property
    def kind(self) -> str:
        """'depthwise', 'pointwise' or 'conv': what the layer does, for summaries and the fast path."""
        if self.groups == self.in_channels and self.groups > 1:
            return "depthwise"
        return "pointwise" if self.kernel_size == 1 and self.groups == 1 else "conv"

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        k = self.kernel_size
        shapes = {f"{self.name}.convolution.weight": (self.out_channels, self.in_channels // self.groups, k, k)}
        if self.bias:
            shapes[f"{self.name}.convolution.bias"] = (self.out_channels,)
        if self.norm_eps is not None:
            for p in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{self.name}.normalization.{p}"] = (self.out_channels,)
            shapes[f"{self.name}.normalization.num_batches_tracked"] = ()
        return shapes

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding for an input of this size."""
        if self.tf_padding:  # TensorFlow "SAME": depends on the input size, extra pixel bottom/right
            top, bottom = ops.tf_same_padding_amounts(height, self.kernel_size, self.stride, self.dilation)
            left, right = ops.tf_same_padding_amounts(width, self.kernel_size, self.stride, self.dilation)
            return top, bottom, left, right
        p = (self.kernel_size - 1) // 2 * self.dilation  # PyTorch-style symmetric padding
        return p, p, p, p

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        top, bottom, left, right = self.padding(height, width)
        return (ops.conv_output_size(height, self.kernel_size, self.stride, top + bottom, self.dilation),
                ops.conv_output_size(width, self.kernel_size, self.stride, left + right, self.dilation))

    def __call__(self, x: np.ndarray, params: dict[str, np.ndarray], record: Recorder = no_record) -> np.ndarray:
        if self.tf_padding:
            x = ops.pad_tf_same(x, self.kernel_size, self.stride, self.dilation)
            padding = 0
        else:
            padding = (self.kernel_size - 1) // 2 * self.dilation
        x = ops.conv2d(x, params[f"{self.name}.convolution.weight"], params.get(f"{self.name}.convolution.bias"),
                       stride=self.stride, padding=padding, dilation=self.dilation, groups=self.groups)
        record(f"{self.name}.convolution", x)                       # (N, C_out, H_out, W_out)
        if self.norm_eps is not None:
            p = f"{self.name}.normalization."
            x = ops.batch_norm(x, params[p + "running_mean"], params[p + "running_var"],
                               params[p + "weight"], params[p + "bias"], self.norm_eps)
            record(f"{self.name}.normalization", x)
        if self.activation is not None:
            x = ACTIVATIONS[self.activation](x)
            record(f"{self.name}.activation", x)
        record(self.name, x)
        return x


def classifier_shapes(num_labels: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
    """The image-classification head's weights; transformers uses nn.Identity (no weights) for 0 labels."""
    if num_labels == 0:
        return {}
    return {"classifier.weight": (num_labels, hidden_size), "classifier.bias": (num_labels,)}


def classify(pooled: np.ndarray, params: dict[str, np.ndarray], num_labels: int, record: Recorder) -> np.ndarray:
    """(N, hidden_size) pooled features -> (N, num_labels) logits. Dropout is the identity at inference."""
    logits = pooled
    if num_labels > 0:
        logits = ops.linear(pooled, params["classifier.weight"], params["classifier.bias"])  # (N, num_labels)
    record("classifier", logits)
    return logits


# --------------------------------------------------------------------------------------------------
# outputs: the transformers output classes, with the same names and fields
# --------------------------------------------------------------------------------------------------

class ModelOutput:
    """Fields by attribute (`out.logits`), by key (`out["logits"]`) or as a tuple of the non-None fields."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@dataclasses.dataclass
class BaseModelOutputWithPoolingAndNoAttention(ModelOutput):
    last_hidden_state: np.ndarray = None          # (N, C, h, w)
    pooler_output: np.ndarray | None = None       # (N, C)
    hidden_states: tuple[np.ndarray, ...] | None = None


@dataclasses.dataclass
class ImageClassifierOutputWithNoAttention(ModelOutput):
    loss: None = None                             # inference only: always None
    logits: np.ndarray = None                     # (N, num_labels)
    hidden_states: tuple[np.ndarray, ...] | None = None


@dataclasses.dataclass
class SemanticSegmenterOutput(ModelOutput):
    loss: None = None
    logits: np.ndarray = None                     # (N, num_labels, h, w): at the feature map's resolution
    hidden_states: tuple[np.ndarray, ...] | None = None
    attentions: None = None


# --------------------------------------------------------------------------------------------------
# the model base class
# --------------------------------------------------------------------------------------------------

class PreTrainedModel:
    """Weights bookkeeping for every network: random init, state_dict, loading and saving.

    Subclasses set `config_class` and `base_model_prefix`, build their layers in `_build()` and
    compute in `forward()`. `model(pixel_values)` checks the input, then calls `forward`.
    """

    config_class: ClassVar[type]
    base_model_prefix: ClassVar[str] = ""

    def __init__(self, config, seed: int | None = 0, *, params: dict[str, np.ndarray] | None = None,
                 prefix: str = ""):
        """A model with random weights drawn from `seed` (see `random_parameters`).

        `params` and `prefix` are for composition: a head model passes its own dict, so that the
        backbone reads `mobilenet_v2.*` entries from the same place.
        """
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.prefix = prefix
        self.params: dict[str, np.ndarray] = {} if params is None else params
        self._build()
        if params is None and seed is not None:
            self.params.update(random_parameters(self.parameter_shapes(), seed))

    # -- to be provided by each network ---------------------------------------------------------------
    def _build(self) -> None:
        raise NotImplementedError

    def conv_layers(self) -> Iterator[ConvLayer]:
        """Every ConvLayer in execution order."""
        raise NotImplementedError

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """state_dict key -> shape, in the order transformers' state_dict lists them."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.conv_layers():
            shapes.update(layer.parameter_shapes())
        return shapes

    def forward(self, pixel_values: np.ndarray, output_hidden_states: bool, record: Recorder) -> ModelOutput:
        raise NotImplementedError

    # -- running --------------------------------------------------------------------------------------
    reference: bool = False  # True: every call takes the readable path (as fast=False does)

    def __call__(self, pixel_values, output_hidden_states: bool = False, record: Recorder | None = None,
                 fast: bool | None = None):
        """Run the network on (N, num_channels, H, W) pixel values (float32 or float64).

        `record(name, tensor)`, when given, receives every intermediate tensor under its transformers
        module path. Returns the transformers output object of this architecture.
        Without `record`, the fast path (mobilenet_np/fast.py: the same layers, BatchNorm folded,
        channels-last) computes it, unless `fast=False` or `self.reference` asks for `forward` below.
        """
        pixel_values = check_pixel_values(pixel_values, self.config.num_channels)
        missing = [k for k in self.parameter_shapes() if k not in self.params]
        if missing:
            raise WeightsError(f"{type(self).__name__} has no weights for {len(missing)} tensors, e.g. {missing[0]}")
        if record is None and (not self.reference if fast is None else fast):
            from .fast import fast_forward
            return fast_forward(self, pixel_values, output_hidden_states)
        record = no_record if record is None else record
        record("pixel_values", pixel_values)
        return self.forward(pixel_values, output_hidden_states, record)

    # -- weights --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights keyed like transformers' state_dict, in its order."""
        return {k: self.params[k] for k in self.parameter_shapes()}

    def num_parameters(self) -> int:
        """Learned parameters (BatchNorm running statistics and counters are not counted)."""
        return sum(int(np.prod(s)) for k, s in self.parameter_shapes().items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))

    def load_state_dict(self, tensors: dict[str, Any], source: str = "state_dict") -> None:
        """Replace all weights; every expected tensor must be there with its exact shape, finite.

        A head model's file may be loaded into its base model (the head's tensors are dropped and the
        `{base_model_prefix}.` prefix is stripped), as transformers does; anything else that does not
        fit raises one WeightsError listing every problem.
        """
        tensors = _adapt_prefix(dict(tensors), self.base_model_prefix, self.prefix, self.parameter_shapes())
        expected = self.parameter_shapes()
        problems = []
        missing = [k for k in expected if k not in tensors]
        unexpected = [k for k in tensors if k not in expected]
        if missing:
            problems.append(f"missing {len(missing)} tensors ({_some(missing)})")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} tensors ({_some(unexpected)})")
        loaded = {}
        for key, shape in expected.items():
            if key not in tensors:
                continue
            value = np.asarray(tensors[key])
            if value.shape != tuple(shape):
                problems.append(f"{key} has shape {value.shape}, expected {tuple(shape)}")
            elif key.endswith("num_batches_tracked"):
                loaded[key] = value.astype(np.int64)
            elif value.dtype.kind != "f":
                problems.append(f"{key} has dtype {value.dtype}, expected float32 or float64")
            elif not np.all(np.isfinite(value)):
                problems.append(f"{key} contains NaN or Inf")
            elif key.endswith("running_var") and np.any(value < 0):
                problems.append(f"{key} has negative variances")
            else:
                loaded[key] = value
        if problems:
            raise WeightsError(f"{source}: weights do not fit {type(self).__name__}: " + "; ".join(problems))
        self.params.clear()
        self.params.update(loaded)

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Load a mobilenet-np HDF5 weights file (see docs/weights_format.md)."""
        from .weights import load_model
        return load_model(path, model_class=cls, **kwargs)

    def save_pretrained(self, path, overwrite: bool = False, **metadata) -> None:
        """Write the weights, the config and `metadata` (image_processor, provenance) to an HDF5 file."""
        from .weights import save_weights
        save_weights(path, self.state_dict(), type(self).__name__, self.config.to_dict(),
                     overwrite=overwrite, **metadata)

    def astype(self, dtype):
        """The model with every float weight cast to `dtype` (e.g. np.float64 for a golden reference)."""
        cast = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in self.params.items()}
        model = type(self)(self.config, seed=None)
        model.params.update(cast)
        return model


def _adapt_prefix(tensors, base_prefix, own_prefix, expected) -> dict:
    """Accept a head model's tensors in a base model: strip `base_prefix.` and drop the head's keys."""
    if own_prefix or not base_prefix or any(k in tensors for k in expected):
        return tensors
    marker = base_prefix + "."
    if any(k.startswith(marker) for k in tensors):
        return {k[len(marker):]: v for k, v in tensors.items() if k.startswith(marker)}
    return tensors


def _some(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... {len(keys) - limit} more" if len(keys) > limit else "")


def check_pixel_values(pixel_values, num_channels: int) -> np.ndarray:
    """The input as a float array of shape (N, num_channels, H, W), or a ShapeError saying what is wrong."""
    x = np.asarray(pixel_values)
    if x.dtype.kind not in "f":
        raise ShapeError(f"pixel_values must be a float32 or float64 array, got dtype {x.dtype} "
                         "(use an image processor to turn images into pixel values)")
    if x.ndim != 4 or x.shape[1] != num_channels:
        raise ShapeError(f"pixel_values must have shape (N, {num_channels}, H, W), got {x.shape}")
    if 0 in x.shape:
        raise ShapeError(f"pixel_values is empty: shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return x


def random_parameters(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights for teaching and tests, seeded.

    Convolution and linear weights are He-normal (std sqrt(2 / fan_in)), so activations keep their
    scale through 50+ layers. BatchNorm gets random statistics and affine parameters too (the
    PyTorch defaults 0/1 would hide BatchNorm bugs): weight in [0.5, 1.5], bias and running_mean
    ~ N(0, 0.2), running_var in [0.5, 2].
    """
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            value = np.array(0, dtype=np.int64)
        elif key.endswith("normalization.weight"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif key.endswith(("normalization.bias", "running_mean")):
            value = rng.normal(0.0, 0.2, shape)
        elif key.endswith("bias"):
            value = rng.normal(0.0, 0.05, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        params[key] = value.astype(np.float32) if value.dtype.kind == "f" else value
    return params
