# %% [markdown]
# # 6 · Golden references for ports
#
# Say you are porting MobileNet V2 to C for a microcontroller, to Rust, or to a GPU shader. Your port
# runs, prints a class, and the class is wrong. Which of its 52 convolutions is broken? The answer is a
# **golden reference**: run a trusted implementation once, record *every* intermediate tensor under a
# stable name, run the port on the same input, record the same tensors, and compare them in network
# order. The first tensor that disagrees names the layer with the bug.
#
# mobilenet-np is built for this: `model(x, record=...)` reports every tensor under its transformers
# module path, `mobilenet_np.golden` writes and compares golden files (HDF5, one dataset per tensor),
# and the same tools exist on the command line:
#
#     mobilenet-np golden --weights mobilenet_v2.h5 --seed 0 --out numpy.h5
#     python -m weights_tools golden-torch --weights mobilenet_v2.h5 --seed 0 --out torch.h5
#     mobilenet-np compare torch.h5 numpy.h5
#
# This notebook walks through the three steps — **record, perturb, compare** — and then asks how
# exact a reference must be: float32 against float64, layer by layer.

# %%
import dataclasses
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from mobilenet_np.formats import golden
from notebook_data import load_checkpoint, transformers_twin
from weights_tools.golden_torch import record_transformers

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
_ = torch.set_grad_enabled(False)  # inference only: no autograd bookkeeping
torch.set_num_threads(1)           # small tensors: more threads would mostly wait for each other
warnings.filterwarnings("ignore", message="IProgress not found")

checkpoint = load_checkpoint("mobilenet_v2_1.0_224")
model = checkpoint.model
print(checkpoint.describe())

# The input of `--seed 0`: uniform in [-1, 1), the range of normalized images. A golden file needs an
# input that anyone can regenerate exactly; 128x128 keeps the files small (MobileNet takes any size).
pixel_values, input_info = golden.seeded_input(0, 128, 128)            # (1, 3, 128, 128) float32
print(input_info)

# %% [markdown]
# ## Record
#
# `golden.record_model` runs the network once with a recorder that copies every tensor it is given.
# The names are the transformers module paths, so that a recording of the PyTorch model (through
# forward hooks, `weights_tools.golden_torch.record_transformers`) has the same names. We write the
# recording to an HDF5 golden file, as a port's test suite would read it, and read it back.

# %%
scratch = tempfile.TemporaryDirectory(prefix="golden_")   # deleted at the end (or when the kernel exits)
workdir = Path(scratch.name)
tensors = golden.record_model(model, pixel_values)
attrs = golden.golden_attributes("mobilenet-np", type(model).__name__, model.config.to_dict(),
                                 checkpoint.source, "", "float32", input_info, golden.library_versions())
path = golden.save_golden(workdir / "numpy_float32.h5", tensors, attrs)
reference = golden.read_golden(path)
print(f"{path.name}: {len(reference.tensors)} tensors, {path.stat().st_size / 1e6:.1f} MB")
for name, tensor in list(reference.tensors.items())[:9]:
    print(f"    {name:45s} {tensor.shape}")
print("    ...")
for name, tensor in list(reference.tensors.items())[-3:]:
    print(f"    {name:45s} {tensor.shape}")

# %% [markdown]
# ## Compare with PyTorch
#
# The first use of a golden file is to check the reference itself: record transformers' PyTorch model
# with the same weights on the same input, and compare. `compare_goldens` reports, for every tensor,
# the largest absolute error, the largest error relative to the tensor's scale
# ($\max|a - b| / \max|b|$), the number of elements out of tolerance
# ($|a - b| > \text{atol} + \text{rtol}\,|b|$, with the defaults `golden.DEFAULT_ATOL` and
# `golden.DEFAULT_RTOL`, chosen in `docs/golden_format.md`), and the cosine similarity.

# %%
torch_model = transformers_twin(model)
torch_golden = golden.Golden(record_transformers(torch_model, pixel_values), {"producer": "transformers"})
comparison = golden.compare_goldens(torch_golden, reference)
table = golden.format_table(comparison).splitlines()
print("\n".join(table[:8] + ["  ..."] + table[-3:]))
print(f"\n{len(comparison.rows)} tensors compared with atol={comparison.atol}, rtol={comparison.rtol}: "
      f"passed: {comparison.passed}, largest relative error {max(row.max_rel_error for row in comparison.rows):.1e}")
assert comparison.passed and not comparison.problems

# %% [markdown]
# ## Perturb: three porting bugs, and where the comparison finds them
#
# Now play the port. We make copies of the network with one typical mistake each:
#
# 1. **padding**: symmetric PyTorch-style padding instead of TensorFlow "SAME" in the stride-2
#    depthwise convolution of `layer.2` (notebook 1 explains why that shifts every window);
# 2. **kernel layout**: the 3×3 depthwise kernel of `layer.7` read with rows and columns swapped (the
#    classic HWC/CHW or row/column-major slip when exporting weights);
# 3. **residual**: the shortcut of `layer.10` forgotten.
#
# Each copy is recorded and compared with the reference. The comparison must point at the exact
# tensor where the bug enters, and the plot shows how each error then spreads through the network.

# %%
def port_with_bug(bug):
    """A copy of the model with one porting bug."""
    port = model.astype(np.float32)                     # a new model object with its own weight arrays
    blocks = port.mobilenet_v2.layer
    if bug == "padding":
        block = blocks[2]
        blocks[2] = dataclasses.replace(block, conv_3x3=dataclasses.replace(block.conv_3x3, tf_padding=False))
    elif bug == "kernel layout":
        key = f"{blocks[7].conv_3x3.name}.convolution.weight"
        port.params[key] = np.ascontiguousarray(port.params[key].transpose(0, 1, 3, 2))   # (C, 1, kW, kH)
    elif bug == "residual":
        blocks[10] = dataclasses.replace(blocks[10], use_residual=False)
    return port


bugs = {"padding": "mobilenet_v2.layer.2.conv_3x3.convolution",
        "kernel layout": "mobilenet_v2.layer.7.conv_3x3.convolution",
        "residual": "mobilenet_v2.layer.10"}
comparisons = {}
for bug, where in bugs.items():
    candidate = golden.Golden(golden.record_model(port_with_bug(bug), pixel_values), {"producer": f"port ({bug})"})
    comparisons[bug] = golden.compare_goldens(reference, candidate)
    first = comparisons[bug].first_divergence
    print(f"{bug:14s} first divergence: #{first.index} {first.name} (max relative error {first.max_rel_error:.2g}), "
          f"{sum(r.status == golden.OUT_OF_TOLERANCE for r in comparisons[bug].rows)} tensors out of tolerance")
    assert first.name == where

fig, ax = plt.subplots(figsize=(13, 3.4))
ax.semilogy([max(r.max_rel_error, 1e-9) for r in comparison.rows], color="gray", label="PyTorch (float32), no bug")
for bug, result in comparisons.items():
    ax.semilogy([max(r.max_rel_error, 1e-9) for r in result.rows], label=f"port with bug: {bug}")
names = list(reference.tensors)
ticks = [i for i, name in enumerate(names) if name.count(".") == 2 and ".layer." in name]   # block outputs
ax.set_xticks(ticks, [names[i].removeprefix("mobilenet_v2.") for i in ticks], rotation=60, ha="right")
ax.set_ylim(1e-9, 10)
ax.set_ylabel("max |port - ref| / max |ref|")
ax.set_title("relative error of every recorded tensor, in network order (1e-9 = exactly equal)")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
plt.tight_layout()
plt.show()

# %% [markdown]
# Every bug produces a clean step: exact agreement up to the broken layer, errors of order 1 after it.
# Without the per-layer comparison you would only see a wrong class at the end.
#
# ## How exact is exact? float32 against float64
#
# A port in float32 (or float16, or int8) will never agree bit for bit with a reference, because
# floating-point addition is not associative: summing the same products in another order rounds
# differently. The question is how large honest rounding errors get, so that the tolerances separate
# them from bugs. A float32 number has a relative precision of $2^{-24} \approx 6 \times 10^{-8}$; a
# float64 number $2^{-53} \approx 1.1 \times 10^{-16}$. So a float64 run is, for a float32 port, an
# essentially exact reference, and `model.astype(np.float64)` gives one. We compare, layer by layer:
#
# * NumPy float32 against NumPy float64: the rounding error of our float32 network;
# * PyTorch float32 against PyTorch float64: the same for PyTorch;
# * NumPy float64 against PyTorch float64: do the two *references* agree?

# %%
pixels64 = pixel_values.astype(np.float64)
numpy64 = golden.Golden(golden.record_model(model.astype(np.float64), pixels64), {"producer": "numpy float64"})
torch64 = golden.Golden(record_transformers(torch_model.double(), pixels64), {"producer": "torch float64"})

pairs = {"NumPy float32 vs NumPy float64": (numpy64, reference),
         "PyTorch float32 vs PyTorch float64": (torch64, torch_golden),
         "NumPy float64 vs PyTorch float64": (torch64, numpy64)}
errors = {label: np.array([row.max_rel_error for row in golden.compare_goldens(ref, cand).rows])
          for label, (ref, cand) in pairs.items()}

fig, ax = plt.subplots(figsize=(11, 3.4))
for label, values in errors.items():
    ax.semilogy(np.maximum(values, 1e-18), label=label)
ax.axhline(2.0 ** -24, color="tab:blue", linestyle=":", label="float32 unit roundoff 2^-24")
ax.axhline(2.0 ** -53, color="tab:green", linestyle=":", label="float64 unit roundoff 2^-53")
ax.set_xticks(ticks, [names[i].removeprefix("mobilenet_v2.") for i in ticks], rotation=60, ha="right")
ax.set_ylabel("max |a - b| / max |b|")
ax.set_title("rounding error per recorded tensor (1e-18 = exactly equal)")
ax.legend(fontsize=8, loc="center right")
plt.tight_layout()
plt.show()
for label, values in errors.items():
    print(f"{label:36s} median {np.median(values):.1e}, largest {values.max():.1e}")

# float32 rounding is real (not zero) but passes the default tolerances everywhere...
assert errors["NumPy float32 vs NumPy float64"].max() > 1e-9
assert golden.compare_goldens(numpy64, reference).passed and golden.compare_goldens(torch64, torch_golden).passed
# ...and the two float64 references agree to about 1e-14: eight orders of magnitude better.
assert errors["NumPy float64 vs PyTorch float64"].max() < 1e-12

# %% [markdown]
# With these weights, the float32 error starts at a few $10^{-7}$ (the rounding of the first
# convolution's sums), rises to about $10^{-6}$ within the first blocks and stays there, below
# $10^{-5}$, all the way to the logits: it does not snowball. NumPy and PyTorch make errors of the same size (in different places, since
# they sum in different orders), and in float64 they agree to about $10^{-14}$. That is what makes
# the float64 NumPy run a *golden* reference: its own error is eight orders of magnitude below
# anything a float32 port can be expected to reach, so any difference larger than float32 rounding is
# the port's.
#
# **Summary.** Record every tensor under its module path, compare in network order, and the first
# divergence names the bug: a padding mistake, a transposed kernel or a missing shortcut each show up as
# a step at exactly the broken layer. Honest float32 rounding stays around $10^{-6}$ relative through
# the whole network; set the tolerances between that and the errors of a real bug. Back to the start:
# [the notebook index](README.md).

# %%
scratch.cleanup()           # the golden file of this notebook (tens of MB)
