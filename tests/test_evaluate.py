"""`mobilenet-np evaluate` and mobilenet_np.evaluation: labels from data, metrics, resume, workers, shards.

The numbers of a report are checked against a brute-force recomputation from the pipelines of
mobilenet_np.pipelines (logits and class maps computed image by image, metrics from their
definitions, not from a confusion matrix); the metric functions against loop twins and set-based
definitions on random inputs (hypothesis). Runs that must agree (resumed, 2 workers, a dask
cluster, shards merged) are compared field for field, everything but "timing" (wall-clock).
Tolerances: counts and ratios of counts exactly; mean IoU / mean logit difference 1e-12 (the
order of a float sum).
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

import mobilenet_np
from mobilenet_np.cli import main
from mobilenet_np.errors import ConfigError, OutputExistsError, ShapeError
from mobilenet_np.evaluation import (evaluate, imagenet_synsets, merge_reports, read_report, report_json,
                                     samples_from_folder, shard)
from mobilenet_np.evaluation.labels import LabelResolver
from mobilenet_np.evaluation.metrics import (class_counts, class_counts_naive, confusion_matrix,
                                             confusion_matrix_naive, segmentation_scores, segmentation_scores_naive,
                                             top_k_classes, top_k_classes_naive)
from mobilenet_np.pipelines import ImageClassificationPipeline, ImageSegmentationPipeline
from weights_tools.__main__ import main as tools_main

LABELS = {0: "tabby, tabby cat", 1: "dog", 2: "crane", 3: "crane", 4: "red fox, Vulpes vulpes", 5: "kind 5", 6: "kind 6"}
FOLDERS = {"tabby cat": 0, "dog": 1, "3": 3, "red_fox": 4, "Kind 5": 5, "6": 6}   # folder name -> class it means
SEG_LABELS = {0: "background", 1: "aeroplane", 2: "bicycle", 3: "bird"}
MEAN_ATOL = 1e-12


def without_timing(report):
    return {k: v for k, v in report.items() if k != "timing"}


def random_image(rng, path, size):
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny random classifiers and a segmenter, an ImageFolder tree with a damaged image, masks."""
    folder = tmp_path_factory.mktemp("evaluate")
    processor = {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32},
                 "image_processor_type": "MobileNetV2ImageProcessor"}
    config = mobilenet_np.MobileNetV2Config(depth_multiplier=0.35, image_size=32, id2label=LABELS)
    for name, seed in (("classifier", 1), ("other", 2)):
        mobilenet_np.MobileNetV2ForImageClassification(config, seed=seed).save_pretrained(
            folder / f"{name}.h5", image_processor=processor)
    mobilenet_np.MobileNetV2ForSemanticSegmentation(mobilenet_np.MobileNetV2Config(
        depth_multiplier=0.35, image_size=65, id2label=SEG_LABELS), seed=0).save_pretrained(folder / "segmenter.h5")
    rng = np.random.default_rng(0)
    data = folder / "data"
    for name in FOLDERS:
        (data / name).mkdir(parents=True)
        for j in range(3):
            random_image(rng, data / name / f"{name}_{j}.png", (int(rng.integers(30, 60)), int(rng.integers(30, 60))))
    (data / "dog" / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    (data / "dog" / "notes.txt").write_text("not an image: not picked")
    images = folder / "seg_images"
    masks = folder / "masks"
    images.mkdir()
    masks.mkdir()
    for j in range(5):
        size = (int(rng.integers(40, 80)), int(rng.integers(40, 80)))
        random_image(rng, images / f"s{j}.jpg", size)
        mask = rng.integers(0, 4, (size[1], size[0])).astype(np.uint8)
        mask[:2], mask[:, -3:] = 255, 255                                    # VOC "void" borders
        if j == 3:
            mask[5, 5] = 9                                                   # not a class of the model
        if j != 4:                                                           # s4 has no mask
            Image.fromarray(mask, mode="L").save(masks / f"s{j}.png")
    return {"folder": folder, "classifier": folder / "classifier.h5", "other": folder / "other.h5",
            "segmenter": folder / "segmenter.h5", "data": data, "seg_images": images, "masks": masks}


@pytest.fixture(scope="module")
def whole(files):
    """The report of one run in this process over the ImageFolder tree."""
    return evaluate(files["classifier"], files["data"])


@pytest.fixture(scope="module")
def our_logits(files):
    """key -> the classification pipeline's logits of that image of the ImageFolder tree."""
    pipe = ImageClassificationPipeline(mobilenet_np.load(files["classifier"]))
    return lambda key: pipe.scores(str(files["data"] / key), function_to_apply="none")


# --------------------------------------------------------------------------------------------------
# metrics against their definitions
# --------------------------------------------------------------------------------------------------

@given(st.data())
def test_top_k_against_brute_force(data):
    n, c, k = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 9)), data.draw(st.integers(1, 10))
    values = data.draw(st.lists(st.integers(-2, 2), min_size=n * c, max_size=n * c))   # small ints: many ties
    logits = np.array(values, dtype=np.float32).reshape(n, c)
    top = top_k_classes(logits, k)
    assert top.shape == (n, min(k, c))
    np.testing.assert_array_equal(top, top_k_classes_naive(logits, k))
    np.testing.assert_array_equal(top[:, 0], logits.argmax(axis=1))
    for i in range(n):
        for label in range(c):
            # label is in the top k  <=>  fewer than k classes rank before it (higher score, or tie and lower id)
            before = sum(logits[i, j] > logits[i, label] or (logits[i, j] == logits[i, label] and j < label)
                         for j in range(c))
            assert (label in top[i]) == (before < k)


@given(st.data())
def test_class_counts_against_loops(data):
    c = data.draw(st.integers(1, 6))
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), max_size=30)), dtype=np.int64)
    top1 = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=len(labels), max_size=len(labels))),
                    dtype=np.int64)
    count, correct = class_counts(labels, top1, c)
    naive = class_counts_naive(labels, top1, c)
    np.testing.assert_array_equal(count, naive[0])
    np.testing.assert_array_equal(correct, naive[1])
    assert correct.sum() == np.sum(labels == top1)


@given(st.data())
def test_confusion_matrix_iou_against_pixel_sets(data):
    c = data.draw(st.integers(1, 5))
    h, w = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    target = np.array(data.draw(st.lists(st.sampled_from(list(range(c)) + [255]), min_size=h * w, max_size=h * w)),
                      dtype=np.uint8).reshape(h, w)
    prediction = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=h * w, max_size=h * w))).reshape(h, w)
    confusion = confusion_matrix(target, prediction, c)
    np.testing.assert_array_equal(confusion, confusion_matrix_naive(target, prediction, c))
    # two halves of the pixels add up to the whole (what makes shard reports mergeable)
    split = h // 2
    halves = confusion_matrix(target[:split], prediction[:split], c) + confusion_matrix(target[split:], prediction[split:], c)
    np.testing.assert_array_equal(halves, confusion)
    kept = target != 255
    scores = segmentation_scores(confusion)
    naive = segmentation_scores_naive(confusion)
    ious = []
    for k in range(c):
        intersection = np.sum((target == k) & (prediction == k) & kept)
        union = np.sum(((target == k) | (prediction == k)) & kept)
        expected = intersection / union if union else None
        assert scores["iou"][k] == expected and naive["iou"][k] == expected
        if expected is not None:
            ious.append(expected)
    if ious:
        assert scores["mean_iou"] == pytest.approx(sum(ious) / len(ious), abs=MEAN_ATOL)
        assert naive["mean_iou"] == pytest.approx(scores["mean_iou"], abs=MEAN_ATOL)
    else:
        assert scores["mean_iou"] is None
    expected_accuracy = np.sum((target == prediction) & kept) / kept.sum() if kept.any() else None
    assert scores["pixel_accuracy"] == expected_accuracy == naive["pixel_accuracy"]


def test_metrics_refuse_bad_input():
    with pytest.raises(ShapeError, match="top_k_classes: logits"):
        top_k_classes(np.zeros(3), 1)
    with pytest.raises(ShapeError, match="top_k_classes: k"):
        top_k_classes(np.zeros((1, 3)), 0)
    with pytest.raises(ShapeError, match=r"confusion_matrix: target must hold class ids in \[0, 2\) or 255"):
        confusion_matrix(np.array([[3]]), np.array([[0]]), 2)
    with pytest.raises(ShapeError, match="same shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)


# --------------------------------------------------------------------------------------------------
# labels from the data
# --------------------------------------------------------------------------------------------------

def test_synset_list_is_the_imagenet_class_order():
    synsets = imagenet_synsets()
    assert len(synsets) == len(set(synsets)) == 1000 and synsets == sorted(synsets)
    assert synsets[0] == "n01440764"                                         # tench, class 0 of every 1000-way model


@pytest.mark.parametrize("num_labels", [1000, 1001])
def test_synset_labels_on_the_imagenet_sample(shared_data, num_labels):
    """The sample holds one photo of every tenth class (5, 15, ...); a 1001-class model shifts by one.
    The names of the files agree with labels/imagenet_labels.txt (line 0 = background) at those ids."""
    folder = shared_data / "images" / "imagenet_sample"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    names = (shared_data / "labels" / "imagenet_labels.txt").read_text().splitlines()   # 1001 lines
    id2label = {i: f"class {i}" for i in range(num_labels)}
    samples, source = samples_from_folder(folder, "auto", id2label)
    assert source == "synset" and len(samples) == 100
    offset = num_labels - 1000
    for i, sample in enumerate(samples):
        assert sample.label == 5 + 10 * i + offset
        words = sample.key.split(".")[0][len("n01440764_"):].replace("_", " ").lower()
        parts = [p.strip().lower() for p in names[sample.label + 1 - offset].split(",")]
        assert words in parts, (sample.key, parts)


def test_synset_labels_need_an_imagenet_model(tmp_path):
    random_image(np.random.default_rng(0), tmp_path / "n01440764_tench.png", (8, 8))
    with pytest.raises(ConfigError, match="1000 or 1001 classes, got num_labels 7"):
        samples_from_folder(tmp_path, "synset", LABELS)


def test_folder_and_table_labels(files, tmp_path):
    samples, source = samples_from_folder(files["data"], "auto", LABELS)
    assert source == "folders" and len(samples) == 3 * len(FOLDERS) + 1
    assert [s.key for s in samples] == sorted(s.key for s in samples)
    for sample in samples:
        assert sample.label == FOLDERS[sample.key.split("/")[0]]
    resolve = LabelResolver(LABELS)
    assert resolve("Tabby_Cat", "x") == 0 and resolve("tabby, tabby cat", "x") == 0 and resolve("vulpes vulpes", "x") == 4
    with pytest.raises(ConfigError, match=r"'crane' fits several classes \[2, 3\]"):
        resolve("crane", "here")
    with pytest.raises(ConfigError, match="here: class 'wolf' is not a label"):
        resolve("wolf", "here")
    with pytest.raises(ConfigError, match="class id 7 is out of range"):
        resolve("7", "here")

    table = tmp_path / "labels.tsv"
    table.write_text("file\tlabel\ndog/dog_1.png\tdog\n3/3_0.png\t3\nmissing.png\t6\n")
    samples, source = samples_from_folder(files["data"], str(table), LABELS)
    assert source == "table"
    assert [(s.key, s.label) for s in samples] == [("3/3_0.png", 3), ("dog/dog_1.png", 1), ("missing.png", 6)]
    bad = tmp_path / "bad.csv"
    bad.write_text("dog/dog_1.png,dog\ndog/dog_2.png,wolf\n")
    with pytest.raises(ConfigError, match="bad.csv:2: class 'wolf'"):
        samples_from_folder(files["data"], str(bad), LABELS)


def test_shards_partition_the_sorted_samples(files):
    samples, _ = samples_from_folder(files["data"], "auto", LABELS)
    parts = [shard(samples, k, 3) for k in range(3)]
    assert sorted(s.key for p in parts for s in p) == [s.key for s in samples]
    assert [s.key for s in parts[1]] == [s.key for s in samples[1::3]]
    with pytest.raises(ConfigError, match="0 <= K < N, got 3/3"):
        shard(samples, 3, 3)


# --------------------------------------------------------------------------------------------------
# classification runs
# --------------------------------------------------------------------------------------------------

def test_classification_report_against_brute_force(files, whole, our_logits):
    """Accuracy, per-class counts and top-5 recomputed from the classification pipeline's logits."""
    assert whole["task"] == "classification" and whole["label_source"] == "folders"
    assert whole["images"] == 3 * len(FOLDERS) + 1 and whole["evaluated"] == 3 * len(FOLDERS)
    assert [u["image"] for u in whole["unreadable"]] == ["dog/damaged.png"]
    assert "damaged.png" in whole["unreadable"][0]["error"]
    top1 = top5 = 0
    per_class = {}
    for record in whole["records"]:
        if "error" in record:
            continue
        logits = our_logits(record["image"])
        label = FOLDERS[record["image"].split("/")[0]]
        assert record["label"] == label
        assert record["top"][0] == int(np.argmax(logits))
        rank = sum(logits[j] > logits[label] or (logits[j] == logits[label] and j < label) for j in range(len(logits)))
        top1 += rank == 0
        top5 += rank < 5
        count, correct = per_class.get(label, (0, 0))
        per_class[label] = (count + 1, correct + (rank == 0))
    c = whole["classification"]
    assert (c["labelled"], c["correct_top1"], c["correct_top5"]) == (3 * len(FOLDERS), top1, top5)
    assert c["top1"] == top1 / (3 * len(FOLDERS)) and c["top5"] == top5 / (3 * len(FOLDERS))
    assert {e["class_id"]: (e["count"], e["correct_top1"]) for e in c["per_class"]} == per_class
    assert c["mean_class_accuracy"] == pytest.approx(np.mean([b / a for a, b in per_class.values()]), abs=MEAN_ATOL)
    assert whole["segmentation"] is None and whole["agreement"] is None
    assert whole["timing"]["images"] == whole["images"] and whole["timing"]["images_per_second"] > 0
    assert json.loads(report_json(whole)) == whole                        # the JSON text holds the report exactly


def test_interrupted_run_resumed_equals_the_whole_run(files, whole, tmp_path):
    partial = tmp_path / "run.partial.jsonl"
    seen = []

    def stop_after_7(record):
        seen.append(record["image"])
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(files["classifier"], files["data"], partial=partial, on_record=stop_after_7)
    lines = partial.read_text().splitlines()
    assert len(lines) == 1 + 7 and [json.loads(line)["image"] for line in lines[1:]] == seen
    with open(partial, "a") as f:                                          # a crash in the middle of a line
        f.write('{"image": "dog/do')
    with pytest.raises(OutputExistsError, match="--resume"):
        evaluate(files["classifier"], files["data"], partial=partial)
    with pytest.raises(ConfigError, match="different run .*label_source"):
        evaluate(files["classifier"], files["data"], labels="none", partial=partial, resume=True)
    resumed_images = []
    resumed = evaluate(files["classifier"], files["data"], partial=partial, resume=True, chunk_size=3,
                       on_record=lambda r: resumed_images.append(r["image"]))
    assert sorted(resumed_images) == sorted(set(r["image"] for r in whole["records"]) - set(seen))
    assert resumed["timing"]["images"] == whole["images"] - 7
    assert without_timing(resumed) == without_timing(whole)


def test_two_worker_processes_equal_one_process(files, whole):
    report = evaluate(files["classifier"], files["data"], workers=2, chunk_size=4)
    assert report["timing"]["backend"] == "processes" and report["timing"]["workers"] == 2
    assert without_timing(report) == without_timing(whole)


def test_dask_cluster_equals_one_process(files, whole):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        report = evaluate(files["classifier"], files["data"], dask=cluster.scheduler_address, chunk_size=4)
    assert report["timing"]["backend"] == "dask"
    assert without_timing(report) == without_timing(whole)


def test_shards_merged_equal_the_whole_run(files, whole, tmp_path, capsys):
    shards = [evaluate(files["classifier"], files["data"], shard_index=k, shard_count=3) for k in (2, 0, 1)]
    assert sum(r["images"] for r in shards) == whole["images"]
    assert without_timing(merge_reports(shards)) == without_timing(whole)
    partly = merge_reports(shards[:2])
    assert partly["shard"] == {"indices": [0, 2], "count": 3}
    with pytest.raises(ConfigError, match="each shard must be given once"):
        merge_reports([shards[0], shards[0]])
    other = evaluate(files["other"], files["data"], shard_index=1, shard_count=3)
    with pytest.raises(ConfigError, match="differs from report 1 in weights"):
        merge_reports([shards[0], other])

    # the same through the command: --shard K/N --json, then --merge
    paths = [tmp_path / f"r{k}.json" for k in range(3)]
    for k, path in enumerate(paths):
        progress = ["--no-progress"] if k else []                          # shard 0 with a progress bar
        assert main(["evaluate", str(files["data"]), "--weights", str(files["classifier"]), "--shard", f"{k}/3",
                     "--json", str(path), *progress]) == 0
        assert not (tmp_path / f"r{k}.json.partial.jsonl").exists()       # removed once the report is written
    merged = tmp_path / "merged.json"
    assert main(["evaluate", "--merge", *map(str, paths), "--json", str(merged)]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {whole['classification']['top1']:.4f}" in out
    assert without_timing(read_report(merged)) == without_timing(whole)


def test_command_errors(files, tmp_path, capsys):
    out = tmp_path / "report.json"
    out.write_text("{}")
    cases = [(["evaluate", str(files["data"]), "--weights", str(files["classifier"]), "--json", str(out)],
              "exists already"),
             (["evaluate", str(files["data"]), "--weights", str(files["classifier"]), "--resume"], "partial file"),
             (["evaluate", "--weights", str(files["classifier"])], "expected a DATA folder"),
             (["evaluate", str(files["data"]), "--weights", str(files["segmenter"])], "--masks"),
             (["evaluate", str(files["data"]), "--weights", str(files["classifier"]), "--labels", "synset"],
              "1000 or 1001 classes")]
    for argv, fragment in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mobilenet-np evaluate: error:") and fragment in err, err


# --------------------------------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------------------------------

def test_agreement_with_npy_folder_and_npz(files, whole, our_logits, tmp_path):
    """A port's logits = ours, plus small noise, except two images whose top class is moved."""
    rng = np.random.default_rng(1)
    good = [r["image"] for r in whole["records"] if "error" not in r]
    theirs = {}
    for n, key in enumerate(good):
        logits = our_logits(key).astype(np.float32)
        other = logits + rng.normal(0, 1e-4, logits.shape).astype(np.float32)
        if n in (2, 5):                                                    # moved top class, by 5 and by 9
            other[(int(np.argmax(logits)) + 1) % len(logits)] = logits.max() + (5 if n == 2 else 9)
        theirs[key] = (logits, other)
    folder = tmp_path / "port"
    folder.mkdir()
    for key, (_, other) in theirs.items():
        np.save(folder / f"{os.path.splitext(os.path.basename(key))[0]}.npy", other[None])   # (1, C), by stem
    np.savez(tmp_path / "port.npz", **{key: other for key, (_, other) in theirs.items()})    # by relative path

    sources = {folder: "npy", tmp_path / "port.npz": "npz"}
    try:
        from safetensors.numpy import save_file
        save_file({key.split("/")[-1]: other for key, (_, other) in theirs.items()}, tmp_path / "port.safetensors")
        sources[tmp_path / "port.safetensors"] = "safetensors"                            # by file name
    except ImportError:                                                                    # the `weights` extra
        pass
    differences = {k: np.abs(a.astype(np.float64) - b.astype(np.float64)) for k, (a, b) in theirs.items()}
    for against, kind in sources.items():
        report = evaluate(files["classifier"], files["data"], against=against)
        a = report["agreement"]
        assert a["kind"] == kind
        assert (a["compared"], a["positions"], a["agreeing"]) == (len(good), len(good), len(good) - 2)
        assert a["top1_agreement"] == (len(good) - 2) / len(good)
        assert a["max_abs_logit_difference"] == max(d.max() for d in differences.values())
        assert a["mean_abs_logit_difference"] == pytest.approx(
            sum(d.sum() for d in differences.values()) / sum(d.size for d in differences.values()), abs=MEAN_ATOL)
        assert [d["image"] for d in a["disagreements"]] == [good[5], good[2]]      # worst (largest) first
        assert a["disagreements"][0]["other_top1"] != a["disagreements"][0]["top1"]
        assert without_timing(report)["classification"] == whole["classification"]

    (folder / f"{os.path.splitext(os.path.basename(good[0]))[0]}.npy").unlink()
    report = evaluate(files["classifier"], files["data"], against=folder)
    missing = [u for u in report["unreadable"] if u["image"] == good[0]]
    assert len(missing) == 1 and "no logits for this image" in missing[0]["error"]
    assert report["agreement"]["compared"] == len(good) - 1


def test_agreement_with_a_second_weights_file(files):
    report = evaluate(files["classifier"], files["data"], against=files["other"], workers=1)
    ours = ImageClassificationPipeline(mobilenet_np.load(files["classifier"]))
    other = ImageClassificationPipeline(mobilenet_np.load(files["other"]))
    agreeing, worst = 0, 0.0
    for record in report["records"]:
        if "error" in record:
            continue
        path = str(files["data"] / record["image"])
        a, b = ours.scores(path, "none"), other.scores(path, "none")
        agreeing += int(np.argmax(a) == np.argmax(b))
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
    assert report["agreement"]["agreeing"] == agreeing and report["agreement"]["max_abs_logit_difference"] == worst
    same = evaluate(files["classifier"], files["data"], against=files["classifier"])["agreement"]
    assert same["top1_agreement"] == 1.0 and same["max_abs_logit_difference"] == 0.0 and same["disagreements"] == []


# --------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------

def test_segmentation_against_the_pipelines_class_maps(files):
    report = evaluate(files["segmenter"], files["seg_images"], masks=files["masks"])
    assert report["task"] == "segmentation" and report["label_source"] == "masks"
    assert sorted(u["image"] for u in report["unreadable"]) == ["s3.jpg", "s4.jpg"]   # class 9; no mask
    pipe = ImageSegmentationPipeline(mobilenet_np.load(files["segmenter"]))
    intersection, union, true_pixels = np.zeros(4, int), np.zeros(4, int), np.zeros(4, int)
    correct = counted = ignored = 0
    for name in ("s0", "s1", "s2"):
        prediction = pipe.class_map(str(files["seg_images"] / f"{name}.jpg"))
        target = np.array(Image.open(files["masks"] / f"{name}.png"))
        kept = target != 255
        ignored += int((~kept).sum())
        correct += int(((prediction == target) & kept).sum())
        counted += int(kept.sum())
        for c in range(4):
            intersection[c] += int(((prediction == c) & (target == c) & kept).sum())
            union[c] += int((((prediction == c) | (target == c)) & kept).sum())
            true_pixels[c] += int(((target == c) & kept).sum())
    s = report["segmentation"]
    assert (s["pixels"], s["correct_pixels"], s["ignored_pixels"]) == (counted, correct, ignored)
    assert s["pixel_accuracy"] == correct / counted
    ious = [intersection[c] / union[c] if union[c] else None for c in range(4)]
    assert [e["iou"] for e in s["per_class"]] == ious
    assert [e["true_pixels"] for e in s["per_class"]] == true_pixels.tolist()
    assert s["mean_iou"] == pytest.approx(np.mean([v for v in ious if v is not None]), abs=MEAN_ATOL)
    assert np.array(s["confusion_matrix"]).sum() == counted
    assert json.loads(report_json(report)) == report

    same = evaluate(files["segmenter"], files["seg_images"], against=files["segmenter"])     # no masks: agreement only
    assert same["segmentation"] is None and same["unreadable"] == [] and same["label_source"] == "none"
    logits_size = np.prod(pipe.model(np.zeros((1, 3, 65, 65), np.float32)).logits.shape[2:])   # h * w per image
    assert same["agreement"]["positions"] == same["agreement"]["agreeing"] == 5 * logits_size
    assert same["agreement"]["max_abs_logit_difference"] == 0.0

    halves = [evaluate(files["segmenter"], files["seg_images"], masks=files["masks"], shard_index=k, shard_count=2)
              for k in range(2)]
    assert without_timing(merge_reports(halves)) == without_timing(report)


def test_integer_networks_are_evaluated_and_compared_with_their_float_import(tmp_path):
    """`evaluate` on an --quantized import (the integer path), and its agreement with the float import."""
    fixture = Path(__file__).resolve().parent / "fixtures" / "tflite" / "keras_mobilenet_v1_0.25_96_int8_uint8io.tflite"
    assert tools_main(["import-tflite", str(fixture), str(tmp_path / "int.h5"), "--quantized"]) == 0
    assert tools_main(["import-tflite", str(fixture), str(tmp_path / "float.h5")]) == 0
    data = tmp_path / "data"
    data.mkdir()
    for k in range(4):
        pixels = np.random.default_rng(k).integers(0, 256, (120, 100, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"{k}.png")
    report = evaluate(tmp_path / "int.h5", data, labels="none", against=tmp_path / "float.h5")
    assert report["evaluated"] == 4 and report["agreement"] is not None
    assert 0.0 <= report["agreement"]["top1_agreement"] <= 1.0
