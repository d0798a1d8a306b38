"""Running an evaluation: in this process, in N local processes, or on a dask cluster.

    report = evaluate("mobilenet_v2_1.0_224.h5", "imagenet_sample/", workers=2, partial="run.partial.jsonl")

The steps:
  1. plan: load the network once to learn its task and labels; list the images of the data folder
     with their labels (labels.py); keep shard K of N (sorted keys, position i % N == K).
  2. resume: with resume=True, the records already in the partial file (same header) are kept and
     their images skipped.
  3. evaluate the rest in chunks of `chunk_size` images: one after the other in this process, or
     `workers` local processes (ProcessPoolExecutor, "spawn"), or the workers of the dask.distributed
     cluster at `dask` (client.map over the chunks). Every worker runs one thread (the fast path's
     threads and BLAS): the chunks give the parallelism, and a second layer of threads would only
     fight over the cores. Each record is appended to the partial file as soon as it arrives.
  4. report: built from all the records (report.py), so it does not depend on the order in which
     chunks finished, on the number of workers, or on how often the run was resumed.

Worker processes keep the last spec's Evaluator (the loaded networks) per thread, so that a worker
loads the weights once, not once per chunk; they must see the weights and the images at the same
paths as this process (a shared file system for a dask cluster on other machines).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from threadpoolctl import threadpool_limits

from ..errors import ConfigError
from ..fileio import file_sha256
from ..networks import load
from .evaluator import EvaluationSpec, Evaluator, against_kind, task_of
from .labels import Sample, samples_from_folder, shard
from .report import PartialWriter, build_report, read_partial

try:
    from tqdm import tqdm
except ImportError:  # optional: no progress bar
    tqdm = None

DEFAULT_CHUNK_SIZE = 8


def plan(weights, data, labels: str = "auto", masks=None, against=None,
         shard_index: int = 0, shard_count: int = 1) -> tuple[EvaluationSpec, dict, list[Sample]]:
    """(spec for the workers, header of the run, the samples of this shard sorted by key)."""
    weights = Path(weights)
    model = load(weights)
    task, _ = task_of(model)
    id2label = model.config.id2label
    kind = against_kind(against) if against is not None else None
    if task == "classification" and masks is not None:
        raise ConfigError(f"{weights}: masks are for segmentation networks, this one classifies images")
    if task == "segmentation":
        if masks is None and against is None:
            raise ConfigError(f"{weights}: a segmentation network is evaluated against masks (--masks MASKS_DIR) "
                              "or another network (--against OTHER)")
        if masks is not None and not Path(masks).is_dir():
            raise ConfigError(f"{masks}: no such masks folder")
        labels = "none"
    samples, source = samples_from_folder(data, labels, id2label)
    if task == "segmentation" and masks is not None:
        source = "masks"
    samples = shard(samples, shard_index, shard_count)
    header = {"weights": str(weights), "weights_sha256": file_sha256(weights), "architecture": type(model).__name__,
              "task": task, "num_labels": len(id2label), "labels": [id2label[i] for i in range(len(id2label))],
              "data": str(data), "label_source": source, "masks": None if masks is None else str(masks),
              "against": None if against is None else str(against), "against_kind": kind,
              "shard": None if shard_count == 1 else {"indices": [shard_index], "count": shard_count}}
    spec = EvaluationSpec(str(weights), task, header["masks"], header["against"], kind)
    return spec, header, samples


# --------------------------------------------------------------------------------------------------
# the worker side
# --------------------------------------------------------------------------------------------------

_worker = threading.local()   # per worker thread: the Evaluator of the last spec (see the module docstring)


def _one_thread_worker() -> None:
    """ProcessPoolExecutor initializer: this worker process computes with one thread (BLAS; the fast
    engine's walkers are set per model, see evaluate_chunk)."""
    threadpool_limits(limits=1)


def evaluate_chunk(spec: EvaluationSpec, samples: list[Sample]) -> list[dict]:
    """The records of a chunk of samples, computed in a worker (a local process or a dask worker)."""
    spec = dataclasses.replace(spec, threads=1)          # one walker per worker: the workers are the parallelism
    evaluator = getattr(_worker, "evaluator", None)
    if evaluator is None or evaluator.spec != spec:
        evaluator = _worker.evaluator = Evaluator(spec)
    return [evaluator.record(sample) for sample in samples]


# --------------------------------------------------------------------------------------------------
# the three ways of running the chunks
# --------------------------------------------------------------------------------------------------

def _in_this_process(spec, chunks):
    evaluator = Evaluator(spec)
    for chunk in chunks:
        for sample in chunk:
            yield [evaluator.record(sample)]


def _in_processes(spec, chunks, workers: int):
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_one_thread_worker)
    try:
        futures = [pool.submit(evaluate_chunk, spec, chunk) for chunk in chunks]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _on_dask(spec, chunks, address: str):
    try:
        from distributed import Client, as_completed as dask_completed   # optional: pip install "dask[distributed]"
    except ImportError:
        raise ConfigError('--dask needs dask.distributed (pip install "dask[distributed]")') from None
    try:
        client = Client(address, timeout="20s")
    except OSError as e:
        raise ConfigError(f"cannot reach the dask scheduler at {address} ({e})") from None
    futures = []
    try:
        futures = client.map(evaluate_chunk, [spec] * len(chunks), chunks, pure=False)
        for future in dask_completed(futures):
            yield future.result()
    finally:
        client.cancel(futures)
        client.close()


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------

def evaluate(weights, data, *, labels: str = "auto", masks=None, against=None, shard_index: int = 0,
             shard_count: int = 1, workers: int = 1, dask: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
             partial=None, resume: bool = False, overwrite: bool = False, progress: bool = False,
             on_record: Callable[[dict], None] | None = None) -> dict:
    """Evaluate the network of `weights` on the images of the folder `data`; return the report.

    labels: "auto", "synset", "folders", "none" or a CSV path (labels.py). masks: folder of mask PNGs
    (segmentation). against: weights file, .npz, .safetensors or folder of .npy logits to compare with.
    shard_index / shard_count: evaluate shard K of N. workers: local processes (1: this process).
    dask: address of a dask.distributed scheduler. partial: the JSON-lines file records are streamed
    to; resume: continue the run recorded there; overwrite: start it over. on_record(record) is called
    after each record is written (tests interrupt a run from it).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive int, got {workers!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if dask is not None and workers != 1:
        raise ConfigError("give either workers (local processes) or dask (a cluster), not both")
    if resume and partial is None:
        raise ConfigError("resume needs the partial file of the run (--partial, or --json OUT: OUT.partial.jsonl)")
    spec, header, samples = plan(weights, data, labels, masks, against, shard_index, shard_count)

    done: dict[str, dict] = {}
    if resume and Path(partial).exists():
        keys = {s.key for s in samples}
        done = {r["image"]: r for r in read_partial(partial, header) if r["image"] in keys}
    todo = [s for s in samples if s.key not in done]
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
    if dask is not None:
        backend, results = "dask", _on_dask(spec, chunks, dask)
    elif workers > 1:
        backend, results = "processes", _in_processes(spec, chunks, workers)
    else:
        backend, results = "process", _in_this_process(spec, chunks)

    writer = PartialWriter(partial, header, resume, overwrite) if partial is not None else None
    bar = tqdm(total=len(samples), initial=len(done), desc="evaluate", unit="image", file=sys.stderr,
               leave=False, disable=not progress) if tqdm is not None else None
    new: list[dict] = []
    start = time.perf_counter()
    try:
        for records in results:
            for record in records:
                if writer is not None:
                    writer.write(record)
                new.append(record)
                if bar is not None:
                    bar.update(1)
                if on_record is not None:
                    on_record(record)
    finally:
        results.close()                                      # stops the workers when interrupted
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - start
    timing = {"wall_seconds": wall, "images": len(new), "images_per_second": len(new) / wall if wall > 0 else None,
              "workers": None if backend == "dask" else workers, "backend": backend}
    return build_report(header, list(done.values()) + new, timing)
