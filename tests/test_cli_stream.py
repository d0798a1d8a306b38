"""The command line as a tool in a pipeline: streamed results, skipped bad images, --debug anywhere,
a missing extra named, output files with the umask's permissions, an overlay legend showing what is drawn.

The CLIs run in-process through main(argv), except where a separate process is the point (a blocked
import, the console script's stderr).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mobilenet_np
from mobilenet_np.cli import main
from mobilenet_np.cli.segment import legend_entries, overlay_image, voc_palette
from mobilenet_np.errors import WeightsError
from mobilenet_np.fileio import atomic_output
from mobilenet_np.formats import golden
from mobilenet_np.pipelines import ImageClassificationPipeline
from weights_tools.__main__ import main as tools_main
from weights_tools.checkpoints import atomic_output_folder

REPO = Path(__file__).resolve().parents[1]
UMASKS = (0o022, 0o077, 0o002)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small random classifier and a folder of three images whose middle one is broken."""
    folder = tmp_path_factory.mktemp("stream")
    model = mobilenet_np.MobileNetV1ForImageClassification(mobilenet_np.MobileNetV1Config(
        depth_multiplier=0.25, image_size=32, id2label={i: f"kind {i}" for i in range(5)}), seed=0)
    model.save_pretrained(folder / "classifier.h5")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(images / name)
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"classifier": folder / "classifier.h5", "images": images}


def classify_watching_stdout(monkeypatch, capsys, argv) -> tuple[int, list[str], str, str]:
    """Run classify; return (status, stdout printed before each image was classified, all stdout, stderr)."""
    seen, printed, errors = [], [], []
    scores = ImageClassificationPipeline.scores

    def watched(self, image, *args, **kwargs):
        captured = capsys.readouterr()
        printed.append(captured.out)
        errors.append(captured.err)
        seen.append("".join(printed))
        return scores(self, image, *args, **kwargs)

    monkeypatch.setattr(ImageClassificationPipeline, "scores", watched)
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, seen, "".join(printed) + captured.out, "".join(errors) + captured.err


# --------------------------------------------------------------------------------------------------
# classify: one result per image, as it goes; bad images skipped
# --------------------------------------------------------------------------------------------------

def test_classify_table_is_printed_image_by_image(files, monkeypatch, capsys):
    good = [files["images"] / "a.png", files["images"] / "c.png"]
    status, seen, out, err = classify_watching_stdout(
        monkeypatch, capsys, ["classify", *good, "--weights", files["classifier"], "--top-k", 2])
    assert status == 0 and len(seen) == 2
    assert seen[0] == ""                                   # nothing before the first image
    assert seen[1].splitlines()[0] == str(good[0])         # the first table is out before the second image runs
    assert str(good[1]) not in seen[1]
    assert [line for line in out.splitlines() if line.endswith(".png")] == [str(p) for p in good]


def test_classify_json_is_one_document_streamed_a_result_per_line(files, monkeypatch, capsys):
    status, seen, out, err = classify_watching_stdout(
        monkeypatch, capsys, ["classify", files["images"], "--weights", files["classifier"], "--json"])
    a, b, c = (str(files["images"] / n) for n in ("a.png", "b.png", "c.png"))
    assert status == 1                                      # one image failed
    document = json.loads(out)                              # still one JSON document
    assert [r["image"] for r in document["results"]] == [a, c]
    assert document["failed"][0]["image"] == b and "b.png" in document["failed"][0]["error"]
    assert document["command"] == "classify" and document["top_k"] == 5
    # when the broken b.png and then c.png were read, a.png's result line was already out
    assert len(seen) == 3 and a not in seen[0]
    result_lines = [json.loads(line.strip().rstrip(",")) for line in seen[1].splitlines()[1:]]
    assert [r["image"] for r in result_lines] == [a]
    skipped = [line for line in err.splitlines() if b in line]
    assert len(skipped) == 1 and skipped[0].endswith("(skipped)") and "error" in skipped[0]
    expected = ImageClassificationPipeline(mobilenet_np.load(files["classifier"]))
    for result in document["results"]:
        scores = expected.scores(result["image"])
        assert [p["score"] for p in result["predictions"]] == sorted(scores.tolist(), reverse=True)


def test_classify_all_good_images_exit_0_and_failed_is_empty(files, capsys):
    status = main(["classify", str(files["images"] / "a.png"), "--weights", str(files["classifier"]), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert status == 0 and document["failed"] == [] and len(document["results"]) == 1


def test_classify_console_script_skips_the_bad_image(files):
    """A real process, output to a pipe: the good images on stdout, one line on stderr for the bad one, exit 1."""
    result = subprocess.run([sys.executable, "-m", "mobilenet_np", "classify", str(files["images"]),
                             "--weights", str(files["classifier"]), "--top-k", "1"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1, result.stderr
    assert [line for line in result.stdout.splitlines() if line.endswith(".png")] == \
        [str(files["images"] / "a.png"), str(files["images"] / "c.png")]
    assert "Traceback" not in result.stderr and "b.png" in result.stderr


# --------------------------------------------------------------------------------------------------
# --debug before and after the subcommand
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_works_before_and_after_the_subcommand(where, tmp_path, capsys):
    command = ["summary", "--weights", str(tmp_path / "absent.h5")]
    argv = ["--debug", *command] if where == "before" else [*command, "--debug"]
    with pytest.raises(WeightsError):
        main(argv)
    assert main(command) == 2 and "absent.h5" in capsys.readouterr().err
    tools_argv = ["golden-torch", "--weights", str(tmp_path / "absent.h5"), "--seed", "0", "--out",
                  str(tmp_path / "out.h5")]
    with pytest.raises(WeightsError):
        tools_main(["--debug", *tools_argv] if where == "before" else [*tools_argv, "--debug"])


# --------------------------------------------------------------------------------------------------
# python -m weights_tools without the weights extra
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("blocked, argv", [
    ("huggingface_hub", ["convert", "no/such-model", "out.h5"]),
    ("tqdm", ["--help"]),
    ("safetensors", ["convert", "{checkpoint}", "out.h5"]),
    ("tflite", ["import-tflite", "{empty}", "out.h5"]),
])
def test_a_missing_extra_is_named_not_a_traceback(blocked, argv, files, tmp_path):
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    checkpoint = tmp_path / "checkpoint"                  # a transformers folder: reading it needs safetensors
    assert tools_main(["export", str(files["classifier"]), str(checkpoint), "--no-progress"]) == 0
    argv = [a.format(checkpoint=checkpoint, empty=empty) for a in argv]
    code = (f"import runpy, sys; sys.modules[{blocked!r}] = None; sys.argv = ['weights_tools'] + {argv!r}; "
            "runpy.run_module('weights_tools', run_name='__main__', alter_sys=True)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    # one line that names the package and the extra, whichever layer noticed it first (the command's
    # import, or a reader that imports it on demand)
    assert len(lines) == 1 and lines[0].startswith("python -m weights_tools"), lines
    assert blocked in lines[0] and 'pip install "mobilenet-np[weights]"' in lines[0], lines


# --------------------------------------------------------------------------------------------------
# output files get the permissions of the umask
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def umask():
    previous = os.umask(0o022)
    try:
        yield lambda value: os.umask(value)
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask", UMASKS)
def test_atomic_files_and_folders_get_the_umask_permissions(mask, umask, tmp_path):
    umask(mask)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")                                 # what any new file gets
    with atomic_output(tmp_path / "file.bin") as tmp:
        tmp.write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "file.bin").stat().st_mode) == 0o666 & ~mask == stat.S_IMODE(plain.stat().st_mode)
    with atomic_output_folder(tmp_path / "folder") as tmp:
        (tmp / "inside").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "folder" / "inside").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("mask", UMASKS)
def test_command_outputs_get_the_umask_permissions(mask, umask, files, tmp_path, capsys):
    umask(mask)
    weights = tmp_path / "weights.h5"
    mobilenet_np.load(files["classifier"]).save_pretrained(weights)
    out = tmp_path / "golden.npz"
    assert main(["golden", "--weights", str(weights), "--seed", "0", "--out", str(out)]) == 0
    assert tools_main(["export", str(weights), str(tmp_path / "exported"), "--no-progress"]) == 0
    for path in (weights, out, tmp_path / "exported" / "model.safetensors", tmp_path / "exported" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE((tmp_path / "exported").stat().st_mode) == 0o777 & ~mask
    assert golden.read_golden(out).tensors["pixel_values"].shape == (1, 3, 32, 32)


# --------------------------------------------------------------------------------------------------
# the segmentation overlay's legend shows the colours drawn
# --------------------------------------------------------------------------------------------------

def test_legend_shows_the_untinted_background_as_untinted():
    shares = [{"class_id": 0, "label": "background"}, {"class_id": 3, "label": "bird"}]
    entries = legend_entries(shares, {0}, voc_palette())
    assert entries == [("background (untinted)", None), ("bird", tuple(int(c) for c in voc_palette()[3]))]
    image = Image.fromarray(np.full((300, 400, 3), 200, dtype=np.uint8))
    class_map = np.zeros((300, 400), dtype=np.int64)
    class_map[150:, 200:] = 3
    legend = np.asarray(overlay_image(image, class_map, shares, background={0}))[:40, :140].reshape(-1, 3)
    colours = {tuple(p) for p in legend}
    assert tuple(voc_palette()[3]) in colours              # the bird's swatch
    assert (0, 0, 0) not in colours                       # no black swatch: background is not drawn black
