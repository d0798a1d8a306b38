"""What the two config classes share: labels, dict/JSON round trips and field checks.

The configs mirror `transformers.MobileNetV1Config` / `MobileNetV2Config`: same field names, same
defaults, and `from_dict` takes a transformers config.json dict as it is. `from_pretrained` reads the
config of a weights file, a checkpoint folder or a Hub id (formats/transformers_checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError
from .formats.transformers_checkpoint import read_pretrained
from .formats.weights import WeightsFile
from .registry import ARCHITECTURES

# Keys of a transformers config.json that carry no architecture information (kept out of our fields).
_BOOKKEEPING_KEYS = {"architectures", "transformers_version", "torch_dtype", "dtype", "model_type",
                     "_name_or_path", "output_hidden_states", "return_dict"}
# transformers' choice of classification loss, inferred on the first call with labels and kept.
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

SUPPORTED_ACTIVATIONS = ("relu6", "relu")


@dataclasses.dataclass
class PretrainedConfig:
    """Base of the MobileNet configs: label bookkeeping as in transformers' PreTrainedConfig.

    `num_labels` and `id2label` describe the classifier. Give either; by default there are 2 labels
    named LABEL_0 and LABEL_1, as in transformers.
    """

    model_type: ClassVar[str] = ""

    def _init_labels(self) -> None:
        if self.id2label is not None:
            try:
                labels = {int(k): str(v) for k, v in dict(self.id2label).items()}
                self.id2label = dict(sorted(labels.items()))  # JSON files may list "10" before "2"
            except (TypeError, ValueError):
                raise ConfigError(f"config field 'id2label' must map integer ids to names, got {self.id2label!r:.80}")
            if self.num_labels is not None and self.num_labels != len(self.id2label):
                raise ConfigError(f"config field 'num_labels' is {self.num_labels} but 'id2label' has {len(self.id2label)} entries")
            if sorted(self.id2label) != list(range(len(self.id2label))):
                raise ConfigError("config field 'id2label' must have the keys 0 .. num_labels - 1")
        else:
            n = 2 if self.num_labels is None else self.num_labels
            _check(isinstance(n, int) and not isinstance(n, bool) and n >= 0, "num_labels", "a non-negative int", n)
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.num_labels = len(self.id2label)
        # Names may repeat (ImageNet has two "crane"s): the last id wins, as in the published configs.
        self.label2id = {name: i for i, name in self.id2label.items()}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]):
        """Build a config from a transformers config.json dict. Unknown keys are ignored."""
        if not isinstance(config_dict, dict):
            raise ConfigError(f"a {cls.__name__} needs a dict, got {type(config_dict).__name__}")
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ConfigError(f"config field 'model_type' is {model_type!r}, expected {cls.model_type!r} for {cls.__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config_dict.items() if k in names and k != "label2id"}
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, revision: str | None = None, **overrides):
        """The config stored with pretrained weights, as transformers' `Config.from_pretrained`.

        `pretrained_model_name_or_path`: a mobilenet-np .h5 file, a transformers checkpoint folder
        (or its model.safetensors), or a Hub id in huggingface_hub's cache (`revision`: its branch,
        tag or commit). `overrides` replace config fields, e.g. `tf_padding=False`.
        """
        return cls.from_weights_file(read_pretrained(pretrained_model_name_or_path, revision), **overrides)

    @classmethod
    def from_weights_file(cls, stored: WeightsFile, **overrides):
        """The config of weights read by formats.transformers_checkpoint.read_pretrained, with `overrides`
        (`num_labels` without `id2label` drops the stored labels: LABEL_0, ... as in transformers)."""
        if ARCHITECTURES[stored.architecture].family != cls.model_type:
            raise ConfigError(f"{stored.path}: holds a {stored.architecture}, whose config is not a {cls.__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}.from_pretrained: unknown config field {unknown[0]!r}, "
                              f"expected one of {sorted(names)}")
        config_dict = dict(stored.config)
        if "num_labels" in overrides and "id2label" not in overrides:
            config_dict.pop("id2label", None)
        try:
            return cls.from_dict({**config_dict, **overrides})
        except ConfigError as e:
            raise ConfigError(f"{stored.path}: {e}") from None

    @classmethod
    def from_json_file(cls, path):
        path = Path(path)
        try:
            config_dict = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a JSON config file ({e})") from None
        return cls.from_dict(config_dict)

    def to_dict(self) -> dict[str, Any]:
        """A transformers-style config.json dict (id2label keys as strings, model_type included)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["id2label"] = {str(i): name for i, name in self.id2label.items()}
        d["label2id"] = dict(self.label2id)
        d["model_type"] = self.model_type
        if d["problem_type"] is None:      # as transformers' config.json: written once a loss has set it
            del d["problem_type"]
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def _validate_common(self) -> None:
        _check_int(self.num_channels, "num_channels", minimum=1)
        size = self.image_size
        sizes = [size] if isinstance(size, int) and not isinstance(size, bool) else size
        _check(isinstance(sizes, (list, tuple)) and len(sizes) in (1, 2)
               and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes),
               "image_size", "a positive int or an [height, width] pair", size)
        _check(_is_number(self.depth_multiplier) and self.depth_multiplier > 0, "depth_multiplier", "a number > 0",
               self.depth_multiplier)
        _check_int(self.min_depth, "min_depth", minimum=1)
        _check(self.hidden_act in SUPPORTED_ACTIVATIONS, "hidden_act", f"one of {SUPPORTED_ACTIVATIONS}", self.hidden_act)
        _check(isinstance(self.tf_padding, bool), "tf_padding", "true or false", self.tf_padding)
        _check(_is_number(self.classifier_dropout_prob) and 0 <= self.classifier_dropout_prob <= 1,
               "classifier_dropout_prob", "a number in [0, 1]", self.classifier_dropout_prob)
        _check(_is_number(self.layer_norm_eps) and self.layer_norm_eps > 0, "layer_norm_eps", "a number > 0",
               self.layer_norm_eps)
        _check(_is_number(self.initializer_range) and self.initializer_range >= 0, "initializer_range",
               "a number >= 0", self.initializer_range)
        _check(self.problem_type is None or self.problem_type in PROBLEM_TYPES, "problem_type",
               f"null or one of {PROBLEM_TYPES}", self.problem_type)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _check(condition: bool, field: str, expected: str, value) -> None:
    if not condition:
        raise ConfigError(f"config field {field!r} must be {expected}, got {value!r}")


def _check_int(value, field: str, minimum: int) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, field,
           f"an int >= {minimum}", value)


def image_size_pair(image_size) -> tuple[int, int]:
    """config.image_size (an int or an [h, w] pair) as (height, width)."""
    if isinstance(image_size, int):
        return image_size, image_size
    return (image_size[0], image_size[0]) if len(image_size) == 1 else (image_size[0], image_size[1])
