"""Time a training step of mobilenet_np against PyTorch eager on the same model and batch, in one process.

    python benchmarks/bench_train.py                      # both cases, 7 interleaved repeats
    python benchmarks/bench_train.py --cases v2_0.35_32 --repeats 3

Cases (float32, train mode, dropout 0; mobilenet_np on one thread, BLAS included, as `mobilenet-np train`
runs by default; torch on --torch-threads, default 1):
    v2_0.35_32   MobileNetV2 0.35 at 32x32, batch 64, 10 labels (the Fashion-MNIST run)
    v2_1.0_224   MobileNetV2 1.0 at 224x224, batch 8, 1001 labels

For each case, two measurements, each interleaved (mobilenet_np, torch, mobilenet_np, ...) and reported
as medians:
    step       forward + backward + SGD(momentum 0.9, weight decay) update
               mobilenet_np: Trainer.train_step (channels-last kernels); torch: transformers model,
               zero_grad, loss.backward(), optimizer.step()
    fwd+bwd    the loss and all gradients only: model.loss_and_gradients / loss.backward(), and
               mobilenet_np's readable kernels (training/backward.py, fast=False) beside them
Then mobilenet_np's fwd+bwd once more with every kernel of training/channels_last.py timed (where the
time goes, per layer type). Results: printed, and benchmarks/results/train_<machine>.json.

torch uses both cores by default on this 2-core machine and is ~1.4x faster so (measured):
`--torch-threads 2` shows mobilenet_np's one thread against that.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from mobilenet_np.image_processing import MobileNetV2ImageProcessor  # noqa: E402
from mobilenet_np.training import channels_last as CL  # noqa: E402
from mobilenet_np.trainer import data as D  # noqa: E402
from mobilenet_np.trainer.loop import Trainer, TrainSettings  # noqa: E402
from torch_reference import numpy_twin, random_transformers_model  # noqa: E402

CASES = {
    "v2_0.35_32": (dict(depth_multiplier=0.35, num_labels=10), 32, 64),
    "v2_1.0_224": (dict(num_labels=1001), 224, 8),
}
ARCHITECTURE = "MobileNetV2ForImageClassification"


def build(config, size, batch, seed=0):
    torch_model = random_transformers_model(ARCHITECTURE, seed, classifier_dropout_prob=0.0, **config).train()
    model = numpy_twin(torch_model, ARCHITECTURE)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
    targets = rng.integers(0, config["num_labels"], batch)
    dataset = D.Dataset(images, targets, [str(i) for i in range(config["num_labels"])],
                        [str(i) for i in range(batch)], "random")
    processor = MobileNetV2ImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    settings = TrainSettings(epochs=1, batch_size=batch, lr=1e-4, momentum=0.9, weight_decay=4e-5, decay_groups="all")
    trainer = Trainer(model, dataset, None, settings, processor)
    x = D.pixel_values(images, processor, 3)
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=1e-4, momentum=0.9, weight_decay=4e-5)
    return trainer, torch_model, optimizer, x, targets


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def interleaved(engines: dict, repeats: int) -> dict:
    for fn in engines.values():                       # warm-up (allocations, plans, torch's first call)
        fn()
    times = defaultdict(list)
    for r in range(repeats):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for name in order:
            times[name].append(timed(engines[name]))
    return {name: {"median_s": float(np.median(t)), "quartiles_s": [float(np.percentile(t, 25)),
                                                                   float(np.percentile(t, 75))]}
            for name, t in times.items()}


def layer_profile(trainer, x, targets) -> dict:
    """Seconds per kernel of training/channels_last.py during one loss_and_gradients (module attributes
    wrapped for the call; training/graph.py looks them up at call time)."""
    spent = defaultdict(float)
    originals = {name: getattr(CL, name) for name in dir(CL)
                 if not name.startswith("_") and name.endswith(("_forward", "_backward"))
                 and callable(getattr(CL, name))}

    def wrap(name, fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - began
        return inner

    for name, fn in originals.items():
        setattr(CL, name, wrap(name, fn))
    try:
        trainer.model.loss_and_gradients(x, targets)              # warm
        spent.clear()
        total = timed(lambda: trainer.model.loss_and_gradients(x, targets))
    finally:
        for name, fn in originals.items():
            setattr(CL, name, fn)
    return {"total_s": total, "functions_s": dict(sorted(spent.items(), key=lambda kv: -kv[1]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch's threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    results = {"machine": platform.node(), "numpy": np.__version__, "torch": torch.__version__,
               "torch_threads": args.torch_threads, "load_before": os.getloadavg(), "cases": {}}
    with threadpool_limits(limits=1):
        for case in args.cases:
            config, size, batch = CASES[case]
            trainer, torch_model, optimizer, x, targets = build(config, size, batch)
            xt, yt = torch.from_numpy(x), torch.from_numpy(targets)

            def torch_fwd_bwd():
                torch_model.zero_grad(set_to_none=True)
                torch_model(pixel_values=xt, labels=yt).loss.backward()

            def torch_step():
                optimizer.zero_grad(set_to_none=True)
                torch_model(pixel_values=xt, labels=yt).loss.backward()
                optimizer.step()

            step = interleaved({"mobilenet_np": lambda: trainer.train_step(x, targets), "torch": torch_step},
                               args.repeats)
            fwd_bwd = interleaved({"mobilenet_np": lambda: trainer.model.loss_and_gradients(x, targets),
                                   "readable": lambda: trainer.model.loss_and_gradients(x, targets, fast=False),
                                   "torch": torch_fwd_bwd}, args.repeats)
            profile = layer_profile(trainer, x, targets)
            results["cases"][case] = {"batch": batch, "size": size, "step": step, "fwd+bwd": fwd_bwd,
                                      "profile": profile}
            for what, r in (("step", step), ("fwd+bwd", fwd_bwd)):
                ratio = r["mobilenet_np"]["median_s"] / r["torch"]["median_s"]
                readable = (f"   readable kernels {r['readable']['median_s'] * 1e3:8.1f} ms "
                            f"(ratio {r['readable']['median_s'] / r['torch']['median_s']:.2f})" if "readable" in r else "")
                print(f"{case:12s} {what:8s} mobilenet_np {r['mobilenet_np']['median_s'] * 1e3:8.1f} ms   "
                      f"torch {r['torch']['median_s'] * 1e3:8.1f} ms   ratio {ratio:.2f}{readable}")
            print(f"{case:12s} where mobilenet_np's fwd+bwd goes ({profile['total_s'] * 1e3:.0f} ms):")
            for name, seconds in list(profile["functions_s"].items())[:10]:
                print(f"    {name:36s} {seconds * 1e3:8.1f} ms  {seconds / profile['total_s']:5.1%}")
    results["load_after"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / f"train_{platform.node() or 'machine'}_torch{args.torch_threads}t.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"load average before {results['load_before']}, after {results['load_after']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
