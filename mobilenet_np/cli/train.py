"""`mobilenet-np train`: train or fine-tune a network on a dataset (mobilenet_np/trainer/loop.py).

    mobilenet-np train --arch mobilenet_v2 --depth-multiplier 0.35 --image-size 32 \\
        --train /usr/share/datasets/fashion-mnist/train --val /usr/share/datasets/fashion-mnist/t10k \\
        --epochs 10 --batch-size 64 --lr 0.1 --schedule cosine --warmup-steps 500 --out runs/fmnist
    mobilenet-np train --weights mobilenet_v2.h5 --freeze backbone --freeze batchnorm \\
        --train photos/ --val-fraction 0.3 --epochs 20 --batch-size 16 --lr 0.01 --out runs/photos
    mobilenet-np train --resume runs/fmnist/checkpoint.npz          # continues exactly where it stopped

The network comes from --arch (and its options, fresh weights), --config (a config.json) or
--weights (a pretrained file: its head is replaced when the dataset has other classes). The
dataset kinds are those of trainer/data.py (class folders, image/mask folders, .csv, .npz, IDX).
--out DIR receives model.h5 (a normal weights file: classify, segment, pipelines and
`python -m weights_tools export` take it), model_ema.h5 with --ema, checkpoint.npz (every
--checkpoint-every steps and at the end), log.csv, log.json and curves.png (updated every epoch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from threadpoolctl import threadpool_limits

from ..commandline import add_output_arguments, print_json
from ..configuration_utils import image_size_pair
from ..errors import ConfigError, OutputExistsError
from ..image_processing import image_processor_class
from ..networks import load, model_class
from ..trainer import data as D
from ..trainer.loop import FREEZE, OPTIMIZERS, SCHEDULES, Trainer, TrainSettings, init_weights, with_labels
from .summary import ARCH_OPTIONS, ARCHITECTURES, parse_image_size

try:  # optional: the progress bar
    from tqdm import tqdm
except ImportError:
    tqdm = None


def momentum_or_meaning(text: str):
    return text if text in ("transformers", "tensorflow") else float(text)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a network on a dataset",
        description="Train a network from scratch (--arch / --config) or fine-tune one (--weights) on a dataset; "
                    "or continue a run (--resume). See docs/training.md.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", choices=sorted(ARCHITECTURES), help="a fresh network of this architecture")
    source.add_argument("--config", metavar="CONFIG.json", help="a fresh network from a transformers config.json "
                        "(needs 'architectures' or --architecture)")
    source.add_argument("--weights", metavar="FILE.h5", help="start from these weights (fine-tuning)")
    source.add_argument("--resume", metavar="CHECKPOINT.npz", help="continue the run saved in this checkpoint")
    parser.add_argument("--architecture", help="with --config: the transformers class name, e.g. "
                        "MobileNetV2ForImageClassification")
    for flag, field, kind, metavar in ARCH_OPTIONS:
        if field != "num_labels":
            parser.add_argument(flag, type=kind, dest=field, metavar=metavar, help=f"config.{field} (with --arch)")
    parser.add_argument("--image-size", type=parse_image_size, metavar="N|HxW",
                        help="training size (default: config.image_size, or the weights' image processor)")
    data = parser.add_argument_group("data")
    data.add_argument("--train", metavar="SOURCE", help="training data: class folders, images/+masks/ folder, .csv, "
                      ".npz, or an IDX prefix such as /usr/share/datasets/fashion-mnist/train")
    held = data.add_mutually_exclusive_group()
    held.add_argument("--val", metavar="SOURCE", help="held-out data, evaluated after every epoch")
    held.add_argument("--val-fraction", type=float, metavar="F", help="hold out this fraction of --train (seeded)")
    data.add_argument("--skip-bad", action="store_true", help="leave out unreadable images and bad labels (listed) "
                      "instead of stopping at the first")
    data.add_argument("--crop-padding", type=int, default=0, metavar="P", help="random crop after padding P pixels "
                      "(default 0: none)")
    data.add_argument("--flip", action="store_true", help="random horizontal flips")
    data.add_argument("--no-shuffle", action="store_true", help="keep the data order (default: a new order per epoch)")
    run = parser.add_argument_group("optimisation")
    run.add_argument("--epochs", type=int, default=1)
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default 0.01)")
    run.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd = torch.optim.SGD, rmsprop = "
                     "torch.optim.RMSprop, tf-rmsprop = TF1's RMSProp of the papers (default sgd)")
    run.add_argument("--momentum", type=float, default=0.9)
    run.add_argument("--nesterov", action="store_true")
    run.add_argument("--rmsprop-decay", type=float, default=0.9, help="RMSprop alpha / TF decay (default 0.9)")
    run.add_argument("--eps", type=float, help="RMSprop eps (default: torch 1e-8, tf-rmsprop 1.0)")
    run.add_argument("--weight-decay", type=float, default=0.0)
    run.add_argument("--decay-groups", choices=["tf-slim", "all"], default="tf-slim",
                     help="tf-slim: no decay on depthwise filters, BatchNorm, biases (default)")
    run.add_argument("--schedule", choices=SCHEDULES, default="constant")
    run.add_argument("--warmup-steps", type=int, default=0)
    run.add_argument("--warmup-factor", type=float, default=0.1, help="warm-up starts at this fraction of --lr")
    run.add_argument("--step-epochs", type=float, default=1.0, help="step schedule: epochs between decays")
    run.add_argument("--gamma", type=float, default=0.1, help="step schedule: factor per decay")
    run.add_argument("--min-lr", type=float, default=0.0, help="cosine schedule: final lr")
    run.add_argument("--ema", type=float, metavar="DECAY", help="keep a moving average of the weights (e.g. 0.999)")
    run.add_argument("--bn-momentum", type=momentum_or_meaning, default="transformers", metavar="M",
                     help="BatchNorm running-statistics momentum: transformers (TF's decay used as PyTorch's momentum, "
                          "the default), tensorflow (1 - decay), or a number (PyTorch meaning)")
    run.add_argument("--dropout", type=momentum_or_meaning, default="transformers", metavar="P",
                     help="classifier dropout: transformers (config.classifier_dropout_prob as drop probability), "
                          "tensorflow (as keep probability), or a number")
    run.add_argument("--freeze", action="append", choices=FREEZE, default=[],
                     help="backbone: train only the head; batchnorm: BatchNorm in inference mode (repeatable)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    run.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                     help="write checkpoint.npz every STEPS steps (default 0: only at the end)")
    run.add_argument("--eval-batch-size", type=int, default=256)
    run.add_argument("--readable-kernels", dest="channels_last", action="store_false",
                     help="compute with training/backward.py's readable NCHW kernels instead of the channels-last "
                          "ones (the same numbers up to float rounding, ~3x slower)")
    run.add_argument("--blas-threads", type=int, default=1, help="BLAS threads during training (default 1: fastest "
                     "for small batches)")
    run.add_argument("--stop-after", type=int, metavar="STEP", help="stop after this step (a checkpoint is written); "
                     "--resume continues")
    parser.add_argument("--out", metavar="DIR", help="output folder (model.h5, checkpoint.npz, logs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output_arguments(parser, force=True)
    parser.set_defaults(func=run_train)


SETTING_FLAGS = ["epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov", "rmsprop_decay", "eps",
                 "weight_decay", "decay_groups", "schedule", "warmup_steps", "warmup_factor", "step_epochs", "gamma",
                 "min_lr", "batch_norm_momentum", "dropout", "freeze", "crop_padding", "flip", "seed", "dtype",
                 "checkpoint_every", "eval_batch_size", "channels_last"]


def settings_from(args) -> TrainSettings:
    values = {name: getattr(args, name) for name in SETTING_FLAGS if name not in ("batch_norm_momentum",)}
    values.update(batch_norm_momentum=args.bn_momentum, ema_decay=args.ema, shuffle=not args.no_shuffle,
                  freeze=tuple(dict.fromkeys(args.freeze)))
    return TrainSettings(**values)


def fresh_model(args):
    """(model with fresh weights, its image processor) from --arch or --config."""
    if args.arch is not None:
        architecture, defaults = ARCHITECTURES[args.arch]
        fields = dict(defaults)
        fields.update({f: getattr(args, f) for _, f, _, _ in ARCH_OPTIONS if f != "num_labels"
                       and getattr(args, f) is not None})
        if "output_stride" in fields and args.arch == "mobilenet_v1":
            raise ConfigError("--output-stride: mobilenet_v1 has no output stride option")
    else:
        path = Path(args.config)
        try:
            fields = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a readable JSON config ({e})") from None
        architecture = args.architecture or (fields.get("architectures") or [None])[0]
        if architecture is None:
            raise ConfigError(f"{path}: no 'architectures' entry; pass --architecture")
    if args.image_size is not None:
        height, width = args.image_size
        fields["image_size"] = height if height == width else [height, width]
    cls = model_class(architecture)
    model = cls(cls.config_class.from_dict(fields), seed=None)
    height, width = image_size_pair(model.config.image_size)
    processor = image_processor_class(architecture)(size={"shortest_edge": min(height, width)},
                                                    crop_size={"height": height, "width": width})
    return model, processor


def pretrained_model(args):
    """(model, its image processor) from --weights; --image-size changes the processor's output size."""
    model = load(args.weights)
    stored = model.metadata.get("image_processor") or {}
    processor = image_processor_class(stored.get("image_processor_type") or type(model).__name__).from_dict(stored)
    if args.image_size is not None:
        height, width = args.image_size
        processor.size, processor.crop_size = {"shortest_edge": min(height, width)}, {"height": height, "width": width}
    return model, processor


def load_data(spec: dict, processor, num_labels, seed: int):
    """(train, val) datasets from the data arguments stored in `spec` (also in the checkpoint)."""
    train = D.load_dataset(spec["train"], processor, num_labels=num_labels, skip_bad=spec["skip_bad"])
    if spec["val"] is not None:
        val = D.load_dataset(spec["val"], processor, num_labels=num_labels, skip_bad=spec["skip_bad"],
                             classes=train.classes if Path(spec["val"]).suffix == ".csv" else None)
    elif spec["val_fraction"] is not None:
        skipped = train.skipped
        train, val = D.split(train, spec["val_fraction"], seed)
        train.skipped = skipped                                    # reported once, with the training set
    else:
        val = None
    return train, val


def report_skipped(datasets) -> list:
    skipped = [(item, reason) for d in datasets if d is not None for item, reason in d.skipped]
    for item, reason in skipped[:20]:
        print(f"skipped {item}: {reason}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"... and {len(skipped) - 20} more skipped", file=sys.stderr)
    return skipped


def progress_factory(trainer: Trainer, enabled: bool):
    if not enabled or tqdm is None:
        return None
    epochs = trainer.settings.epochs

    def bar(epoch: int, start: int):
        return tqdm(range(start, trainer.steps_per_epoch), initial=start, total=trainer.steps_per_epoch,
                    desc=f"epoch {epoch + 1}/{epochs}", unit="step", file=sys.stderr, leave=False)
    return bar


def run_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        meta, _ = Trainer.read_checkpoint(args.resume)
        spec, out = meta["extra"]["data_arguments"], Path(meta["extra"]["out"])
        processor = image_processor_class(meta["image_processor"].get("image_processor_type")).from_dict(
            meta["image_processor"])
        train, val = load_data(spec, processor, meta["config"]["num_labels"], meta["settings"]["seed"])
        skipped = report_skipped([train, val])
        trainer = Trainer.from_checkpoint(args.resume, train, val)
    else:
        if args.train is None or args.out is None:
            raise ConfigError("--train SOURCE and --out DIR are needed (unless --resume)")
        out = Path(args.out)
        if (out / "model.h5").exists() and not args.force:
            raise OutputExistsError(f"{out / 'model.h5'}: exists already (pass --force to replace it)")
        settings = settings_from(args)
        model, processor = fresh_model(args) if args.weights is None else pretrained_model(args)
        spec = {"train": args.train, "val": args.val, "val_fraction": args.val_fraction, "skip_bad": args.skip_bad}
        train, val = load_data(spec, processor, None, settings.seed)
        skipped = report_skipped([train, val])
        if args.weights is None:
            init_weights(model, settings.seed)
        model = with_labels(model, train.classes, settings.seed)
        out.mkdir(parents=True, exist_ok=True)
        start = args.weights or args.config or f"--arch {args.arch}"
        trainer = Trainer(model, train, val, settings, processor,
                          extra={"data_arguments": spec, "out": str(out), "start": start})
    dropout = trainer.model.mode.drop_probability(trainer.model.graph().classifier_dropout) \
        if trainer.model.graph().classifier_dropout is not None else 0.0
    if dropout >= 0.5 and trainer.model.training:
        print(f"warning: classifier dropout drops {dropout:.3g} of the features (transformers reads TensorFlow's keep "
              f"probability as a drop probability); pass --dropout 0.2 or --dropout tensorflow", file=sys.stderr)

    def on_epoch(trainer, row):
        trainer.write_logs(out)
        if not args.json:
            print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  file=sys.stderr)

    checkpoint = out / "checkpoint.npz"
    with threadpool_limits(limits=args.blas_threads):
        trainer.fit(stop_after=args.stop_after, on_epoch=on_epoch, checkpoint_path=checkpoint,
                    progress=progress_factory(trainer, not args.no_progress))
    trainer.save_checkpoint(checkpoint)
    written = trainer.write_logs(out) if trainer.history else []
    finished = trainer.step >= trainer.total_steps
    models = []
    if finished:
        models.append(trainer.save_model(out / "model.h5", overwrite=True))
        if trainer.ema is not None:
            models.append(trainer.save_model(out / "model_ema.h5", overwrite=True, use_ema=True))
    result = {"command": "train", "out": str(out), "finished": finished, "step": trainer.step,
              "total_steps": trainer.total_steps, "seconds": round(trainer.elapsed, 3),
              "epochs": trainer.history, "models": [str(p) for p in models], "checkpoint": str(checkpoint),
              "logs": [str(p) for p in written], "skipped": [{"item": i, "reason": r} for i, r in skipped]}
    if args.json:
        print_json(result)
    else:
        last = trainer.history[-1] if trainer.history else {}
        summary = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("val_") and isinstance(v, float))
        print(f"{'finished' if finished else 'stopped'} at step {trainer.step}/{trainer.total_steps} in "
              f"{trainer.elapsed:.1f} s{': ' + summary if summary else ''}")
        for path in models:
            print(f"wrote {path}")
        print(f"checkpoint {checkpoint}")
    return 0
