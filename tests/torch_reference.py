"""Build transformers reference models with random weights, and the same network in mobilenet_np.

PyTorch's default init leaves BatchNorm at mean 0, var 1, weight 1, bias 0, which would hide a
wrong epsilon or a swapped statistic: `random_transformers_model` randomises them too.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

import mobilenet_np

# architecture name -> (transformers class, mobilenet_np class)
ARCHITECTURES = {
    "MobileNetV1Model": (transformers.MobileNetV1Model, mobilenet_np.MobileNetV1Model),
    "MobileNetV1ForImageClassification": (transformers.MobileNetV1ForImageClassification,
                                          mobilenet_np.MobileNetV1ForImageClassification),
    "MobileNetV2Model": (transformers.MobileNetV2Model, mobilenet_np.MobileNetV2Model),
    "MobileNetV2ForImageClassification": (transformers.MobileNetV2ForImageClassification,
                                          mobilenet_np.MobileNetV2ForImageClassification),
    "MobileNetV2ForSemanticSegmentation": (transformers.MobileNetV2ForSemanticSegmentation,
                                           mobilenet_np.MobileNetV2ForSemanticSegmentation),
}


def randomize_batch_norm(model: torch.nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters in every BatchNorm of `model` (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.num_batches_tracked.fill_(int(torch.randint(0, 1000, (1,), generator=g)))


def random_transformers_model(architecture: str, seed: int = 0, **config_kwargs) -> torch.nn.Module:
    """A transformers model in eval mode with random weights, BatchNorm statistics included."""
    torch_class, _ = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    model = torch_class(torch_class.config_class(**config_kwargs)).eval()
    # He-normal conv weights keep activations at a useful scale through the whole network.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
    randomize_batch_norm(model, seed + 1)
    return model


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def numpy_twin(torch_model: torch.nn.Module, architecture: str | None = None):
    """The mobilenet_np model with the same config and weights as `torch_model`."""
    architecture = architecture or type(torch_model).__name__
    _, np_class = ARCHITECTURES[architecture]
    config = np_class.config_class.from_dict(torch_model.config.to_dict())
    model = np_class(config, seed=None)
    model.load_state_dict(numpy_state_dict(torch_model), source=architecture)
    return model


def torch_outputs(torch_model: torch.nn.Module, pixel_values: np.ndarray):
    with torch.no_grad():
        return torch_model(torch.from_numpy(pixel_values), output_hidden_states=True)
