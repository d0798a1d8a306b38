"""The model base class: weights bookkeeping (random init, state_dict, loading, saving) and running.

A network here is a list of layer descriptions (mobilenet_np/layers.py, built from the config in the
network files) plus one flat dict of weights, `model.params`, keyed exactly like the transformers
state_dict. `model(pixel_values)` runs the network's graph on the fast engine (mobilenet_np/fast/),
or its readable `forward` when asked (`fast=False`, `model.reference = True`, or a `record` callback).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar, Iterator

import numpy as np

from ..errors import ConfigError, ShapeError, WeightsError
from ..fast import EngineSettings, PlanCache
from ..formats.transformers_checkpoint import read_pretrained
from ..formats.weights import WeightsFile, save_weights
from .. import ops
from ..layers import ConvLayer, Dropout, Graph, Recorder, classifier_shapes, classify, no_record
from ..training import graph as training_graph
from ..training import losses
from ..outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention, ModelOutput
from ..registry import ARCHITECTURES, base_architecture


class ParameterDict(dict):
    """The model's weights by state_dict key, with a version number that every change through it bumps.

    The fast engine keeps BatchNorm-folded copies of the weights per version: assigning an entry
    (`params[key] = array`), `update`, `load_state_dict` or an optimizer step (which calls
    `mark_changed()` after writing in place) make the next call fold them again. Code that writes into
    a weight array in place by other means calls `model.params.mark_changed()` after it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = 0

    def mark_changed(self) -> None:
        self.version += 1

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.mark_changed()

    def __delitem__(self, key):
        super().__delitem__(key)
        self.mark_changed()

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self.mark_changed()

    def clear(self):
        super().clear()
        self.mark_changed()

    def pop(self, *args):
        value = super().pop(*args)
        self.mark_changed()
        return value

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
        self.params: ParameterDict = ParameterDict() if params is None else params
        self.engine = EngineSettings()   # the fast path's threads and band sizes (mobilenet_np/fast/settings.py)
        self.plans = PlanCache()
        self.mode = training_graph.Mode()    # train() / eval(); dropout's generator, the BatchNorm/dropout meanings          # the fast engine's plans for this model (folded weights, arenas)
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
        """The readable path: every layer in NCHW, each intermediate tensor passed to `record`."""
        raise NotImplementedError

    def graph(self) -> Graph:
        """What the network computes, unit by unit, for the fast engine (mobilenet_np/layers.py: Graph)."""
        raise NotImplementedError

    def outputs_from(self, result: dict[str, Any], output_hidden_states: bool) -> ModelOutput:
        """This architecture's output object from the engine's arrays ("last", "pooled", "logits", "hidden_states")."""
        raise NotImplementedError

    # -- running --------------------------------------------------------------------------------------
    reference: bool = False  # True: every call takes the readable path (as fast=False does)
    training: bool = False   # set by train() / eval(), as in PyTorch

    def __call__(self, pixel_values, output_hidden_states: bool = False, labels=None, return_dict: bool = True, *,
                 record: Recorder | None = None, fast: bool | None = None):
        """Run the network on (N, num_channels, H, W) pixel values (float32 or float64).

        The arguments of transformers' forward, in its order: with `labels`, the output's `loss` is
        transformers' loss of this head (see `loss_from`); `return_dict=False` gives the tuple of non-None
        fields (transformers' `to_tuple`). A torch tensor in (`processor(..., return_tensors="pt")`) gives
        torch tensors out, computed here in NumPy.
        `record(name, tensor)`, when given, receives every intermediate tensor under its transformers
        module path. In eval mode (the default), without `record`, the fast engine (mobilenet_np/fast/: the
        same layers, BatchNorm folded, channels-last) computes it, unless `fast=False` or `self.reference`
        asks for `forward`, the readable path. In train mode (`train()`), the training path runs the
        network's graph with batch statistics and dropout (mobilenet_np/training/graph.py), on the
        channels-last kernels unless `fast=False` or `self.reference`.
        """
        torch = _torch_module_of(pixel_values)
        if torch is not None:
            pixel_values = pixel_values.detach().cpu().numpy()
        if _torch_module_of(labels) is not None:
            labels = labels.detach().cpu().numpy()
        pixel_values = self._checked_input(pixel_values, labels)
        if self.training:
            result, _ = training_graph.forward(self.graph(), self.params, pixel_values, self.mode,
                                               output_hidden_states, record or no_record,
                                               channels_last=not self.reference if fast is None else fast)
            outputs = self.outputs_from(result, output_hidden_states)
        elif record is None and (not self.reference if fast is None else fast):
            result = self.plans.run(self.graph(), self.params, pixel_values, output_hidden_states, self.engine)
            outputs = self.outputs_from(result, output_hidden_states)
        else:
            record = no_record if record is None else record
            record("pixel_values", pixel_values)
            outputs = self.forward(pixel_values, output_hidden_states, record)
        if labels is not None:
            outputs.loss, _ = self.loss_from(outputs, labels)
        if torch is not None:
            outputs = _as_torch(outputs, torch)
        return outputs if return_dict else outputs.to_tuple()

    def _checked_input(self, pixel_values, labels) -> np.ndarray:
        pixel_values = check_pixel_values(pixel_values, self.config.num_channels)
        missing = [k for k in self.parameter_shapes() if k not in self.params]
        if missing:
            raise WeightsError(f"{type(self).__name__} has no weights for {len(missing)} tensors, e.g. {missing[0]}")
        if labels is not None:
            self.check_labels(labels)
        return pixel_values

    # -- training -------------------------------------------------------------------------------------
    def train(self, mode: bool = True, *, seed: int | None = None, rng: np.random.Generator | None = None,
              batch_norm_momentum: str | float | None = None, dropout: str | float | None = None,
              frozen_batch_norm: bool | None = None):
        """Train mode (as PyTorch's `model.train()`): BatchNorm on batch statistics, running ones updated,
        dropout active, drawing from `rng` (or a generator seeded with `seed`).

        By default the numbers are transformers' (see training/graph.py: TensorFlow's decay used as
        PyTorch's momentum, keep probabilities used as drop probabilities); `batch_norm_momentum=
        "tensorflow"` and `dropout="tensorflow"` use what TensorFlow meant, a number sets it directly.
        `frozen_batch_norm=True` keeps BatchNorm in inference mode while dropout trains (PyTorch's
        `.eval()` on the BatchNorm modules of a training model). Returns the model."""
        self.training = bool(mode)
        if rng is not None or seed is not None:
            self.mode.rng = rng if rng is not None else np.random.default_rng(seed)
        if batch_norm_momentum is not None:
            self.mode.batch_norm_momentum = batch_norm_momentum
        if dropout is not None:
            self.mode.dropout = dropout
        if frozen_batch_norm is not None:
            self.mode.frozen_batch_norm = bool(frozen_batch_norm)
        self.mode.training = self.training
        return self

    def eval(self):
        """Eval mode (the default): running statistics, no dropout. Returns the model."""
        return self.train(False)

    def freeze(self, *prefixes: str) -> None:
        """No gradients for the parameters whose state_dict names start with a prefix (e.g. "mobilenet_v2.",
        or ".normalization." parts: a prefix matches anywhere it is followed by the rest of a name)."""
        self.frozen = tuple(dict.fromkeys(self.frozen + prefixes))

    def unfreeze(self, *prefixes: str) -> None:
        """Undo `freeze` for these prefixes (all of them when none is given)."""
        self.frozen = tuple(p for p in self.frozen if prefixes and p not in prefixes)

    frozen: tuple[str, ...] = ()

    def trainable_parameters(self) -> dict[str, np.ndarray]:
        """The learned tensors (not BatchNorm's running statistics) that are not frozen, by state_dict name."""
        return {k: self.params[k] for k in self.parameter_shapes()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                and not any(k.startswith(p) or (p.startswith(".") and p in k) for p in self.frozen)}

    def check_labels(self, labels) -> None:
        """Refuse labels this head cannot take before anything runs (each head says)."""
        raise ConfigError(f"{type(self).__name__} has no head, so no loss: labels need a "
                          f"...ForImageClassification or ...ForSemanticSegmentation model")

    def loss_from(self, outputs: ModelOutput, labels) -> tuple[Any, np.ndarray]:
        """(loss, d loss / d logits): transformers' loss of this head (each head says)."""
        raise NotImplementedError

    def loss_and_gradients(self, pixel_values, labels, input_gradient: bool = False, *, fast: bool | None = None
                           ) -> tuple[Any, dict[str, np.ndarray]]:
        """The loss on a batch and its gradient for every trainable tensor, keyed by state_dict name.

        Runs in the model's current mode (train: batch statistics, running statistics updated, dropout;
        eval: running statistics). `input_gradient` adds "pixel_values": d loss / d input. float64
        weights and input give float64 gradients. `fast` (default: unless `self.reference`) runs the
        channels-last kernels (training/channels_last.py); `fast=False` the readable ones of
        training/backward.py, whose float32 reductions accumulate in float64."""
        pixel_values = self._checked_input(pixel_values, labels)
        channels_last = not self.reference if fast is None else fast
        result, tape = training_graph.forward(self.graph(), self.params, pixel_values, self.mode,
                                              channels_last=channels_last)
        loss, dlogits = self.loss_from(self.outputs_from(result, False), labels)
        grads = training_graph.backward(tape, dlogits, input_gradient)
        trainable = self.trainable_parameters()
        return loss, {k: v for k, v in grads.items() if k in trainable or k == "pixel_values"}

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
                loaded[key] = np.array(value, copy=True)   # the model's own copy: the caller's array stays theirs
        if problems:
            raise WeightsError(f"{source}: weights do not fit {type(self).__name__}: " + "; ".join(problems))
        self.params.clear()
        self.params.update(loaded)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, revision: str | None = None):
        """This architecture with pretrained weights, as transformers' `from_pretrained`.

        `pretrained_model_name_or_path`: a mobilenet-np HDF5 weights file (docs/weights_format.md), a
        transformers checkpoint folder (config.json + model.safetensors, or pytorch_model.bin read
        with torch.load(weights_only=True)), its model.safetensors, or a Hugging Face Hub id found in
        (or, online, downloaded into) huggingface_hub's cache; `revision`: the Hub branch, tag or commit.
        The labels, image processor and provenance come along (`model.metadata`).
        """
        return cls.from_weights_file(read_pretrained(pretrained_model_name_or_path, revision))

    @classmethod
    def from_weights_file(cls, weights: WeightsFile):
        """The model of a weights file read by formats.weights.read_weights, as this class.

        The file may hold this architecture or a head on this backbone (e.g. MobileNetV2Model from a
        MobileNetV2ForImageClassification file: the classifier is dropped, as in transformers).
        """
        path = weights.path
        if weights.architecture not in ARCHITECTURES:
            raise WeightsError(f"{path}: root attribute 'architecture' is {weights.architecture!r}, "
                               f"expected one of {sorted(ARCHITECTURES)}")
        if cls.__name__ not in (weights.architecture, base_architecture(weights.architecture)):
            raise WeightsError(f"{path}: holds a {weights.architecture}, which cannot be loaded as a {cls.__name__}")
        try:
            config = cls.config_class.from_dict(weights.config)
        except ConfigError as e:
            raise WeightsError(f"{path}: {e}") from None
        model = cls(config, seed=None)
        model.load_state_dict(weights.tensors, source=str(path))
        model.metadata = {"path": str(path), "architecture": weights.architecture,
                          "image_processor": weights.image_processor, "provenance": weights.provenance}
        return model

    def save_pretrained(self, path, overwrite: bool = False, **metadata) -> None:
        """Write the weights, the config (labels included) and the image processor and provenance to an HDF5 file.

        The image processor and provenance are those the model was loaded with (`model.metadata`),
        unless `metadata` gives them (`image_processor=processor.to_dict()`, `provenance={...}`).
        """
        loaded = getattr(self, "metadata", None) or {}
        kept = {k: loaded[k] for k in ("image_processor", "provenance") if loaded.get(k)}
        save_weights(path, self.state_dict(), type(self).__name__, self.config.to_dict(),
                     overwrite=overwrite, **{**kept, **metadata})

    def astype(self, dtype):
        """The model with every float weight cast to `dtype` (e.g. np.float64 for a golden reference)."""
        cast = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in self.params.items()}
        model = type(self)(self.config, seed=None)
        model.params.update(cast)
        return model


def _torch_module_of(value):
    """The torch module when `value` is a torch tensor, else None (torch is never imported for this)."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(value, torch.Tensor) else None


def _as_torch(outputs: ModelOutput, torch) -> ModelOutput:
    """The same output object with every array (and every hidden state) as a torch tensor."""
    def convert(value):
        if isinstance(value, tuple):
            return tuple(convert(v) for v in value)
        return torch.from_numpy(np.require(value, requirements="W")) if isinstance(value, np.ndarray) else value
    return dataclasses.replace(outputs, **{k: convert(getattr(outputs, k)) for k in outputs.keys()})


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


# --------------------------------------------------------------------------------------------------
# what MobileNet V1 and V2 share: the backbone's outputs, and the image-classification head
# --------------------------------------------------------------------------------------------------

class BackboneModel(PreTrainedModel):
    """MobileNetV1Model / MobileNetV2Model: the layers of `backbone_graph()`, then global average pooling."""

    def __init__(self, config, seed: int | None = 0, add_pooling_layer: bool = True, **kwargs):
        self.add_pooling_layer = add_pooling_layer
        super().__init__(config, seed, **kwargs)

    def backbone_graph(self) -> Graph:
        """The backbone's units and which of them are hidden states (each network file says)."""
        raise NotImplementedError

    def pool(self, x: np.ndarray, record: Recorder) -> np.ndarray:
        """transformers' pooler: (N, C, h, w) -> (N, C), the mean over the feature map."""
        pooled = ops.global_avg_pool2d(x)                  # (N, C, 1, 1)
        record(f"{self.prefix}pooler", pooled)
        return pooled.reshape(pooled.shape[0], -1)         # (N, C)

    def graph(self) -> Graph:
        return dataclasses.replace(self.backbone_graph(),
                                   pool=f"{self.prefix}pooler" if self.add_pooling_layer else None)

    def outputs_from(self, result, output_hidden_states):
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=result["last"], pooler_output=result["pooled"],
            hidden_states=result["hidden_states"] if output_hidden_states else None)


class ImageClassificationModel(PreTrainedModel):
    """MobileNetV1/V2ForImageClassification: the backbone, then dropout (the identity at inference) and a
    linear classifier on the pooled features (`classifier`, nn.Identity in transformers for 0 labels)."""

    backbone_class: ClassVar[type[BackboneModel]]

    @property
    def backbone(self) -> BackboneModel:
        return getattr(self, self.base_model_prefix)

    def _build(self) -> None:
        setattr(self, self.base_model_prefix, self.backbone_class(self.config, seed=None, params=self.params,
                                                                  prefix=f"{self.base_model_prefix}."))

    def conv_layers(self) -> Iterator[ConvLayer]:
        return self.backbone.conv_layers()

    def parameter_shapes(self):
        head = classifier_shapes(self.config.num_labels, self.backbone.hidden_size)
        return {**self.backbone.parameter_shapes(), **head}

    def forward(self, pixel_values, output_hidden_states, record):
        outputs = self.backbone.forward(pixel_values, output_hidden_states, record)
        logits = classify(outputs.pooler_output, self.params, self.config.num_labels, record)  # (N, num_labels)
        return ImageClassifierOutputWithNoAttention(logits=logits, hidden_states=outputs.hidden_states)

    def graph(self) -> Graph:
        return dataclasses.replace(self.backbone.backbone_graph(), pool=f"{self.base_model_prefix}.pooler",
                                   classifier="classifier" if self.config.num_labels > 0 else None,
                                   classifier_dropout=Dropout("dropout", self.config.classifier_dropout_prob))

    def check_labels(self, labels) -> None:
        np.asarray(labels)

    def loss_from(self, outputs, labels):
        """transformers' ForSequenceClassificationLoss: MSE, cross-entropy or BCE by config.problem_type,
        inferred from num_labels and the labels' dtype on the first call and kept in the config."""
        labels = np.asarray(labels)
        self.config.problem_type = losses.infer_problem_type(self.config.num_labels, labels.dtype,
                                                             self.config.problem_type)
        return losses.classification_loss(outputs.logits, labels, self.config.problem_type)

    def outputs_from(self, result, output_hidden_states):
        logits = result["logits"] if result["logits"] is not None else result["pooled"]
        return ImageClassifierOutputWithNoAttention(
            logits=logits, hidden_states=result["hidden_states"] if output_hidden_states else None)
