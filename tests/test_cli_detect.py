"""``relformer detect``: a DETR trained two steps on the Fashion-MNIST canvases detects on a PNG
canvas (grey) and on a resized RGB JPEG, as the model run by hand on the same pixels; its pictures;
the one-line errors (wrong path, a run of another task, a folder without a run, bad options)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from relformer.cli import main
from relformer.data.fashion_detection import CLASSES, build_fashion_detection
from relformer.models import from_pretrained, save_pretrained
from relformer.models.detection.set_prediction import postprocess
from relformer.tasks import resolve_recipe
from relformer.train.checkpoint import write_checkpoint
from relformer.train.recipe import recipe_to_dict

from .test_cli_errors import one_line_error

pytestmark = pytest.mark.slow  # the module trains a tiny run first

_LINE = re.compile(r"^  (.+?)\s+(\d\.\d{3})  (-?[\d.]+) (-?[\d.]+) (-?[\d.]+) (-?[\d.]+)$")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detect")
    out = tmp / "run"
    main(["train", "detr-fashion", "--set", f"data.root={tmp / 'cache'}", "--set", "data.sizes=[16, 2, 2]",
          "--set", "model.name=detr_micro", "--set", "model.options.num_classes=10", "--set", "max_steps=2",
          "--set", "batch_size=8", "--set", "log_every=1", "--out", str(out)])
    canvases = build_fashion_detection(tmp / "cache", sizes=(16, 2, 2))["test"]
    return out, canvases


def _printed(out: str) -> list[tuple[str, float, list[float]]]:
    """The detection lines: (class, score, [x0, y0, x1, y1])."""
    rows = []
    for line in out.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append((m.group(1), float(m.group(2)), [float(v) for v in m.group(3, 4, 5, 6)]))
    return rows


def _by_hand(run_dir, pixels: np.ndarray, threshold: float):
    """The model of the run's best checkpoint on ``pixels (H, W)`` uint8 grey: resized to 128 x 128,
    boxes scaled to (W, H), scores >= threshold, by descending score."""
    model = from_pretrained(run_dir)
    H, W = pixels.shape
    x = torch.from_numpy(pixels).float().div(255)[None, None]
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        result = postprocess(model(x), [[H, W]])[0]
    keep = result["scores"] >= threshold
    order = result["scores"][keep].argsort(descending=True)
    return [(CLASSES[int(label)], float(score), box)
            for label, score, box in zip(result["labels"][keep][order], result["scores"][keep][order],
                                         result["boxes"][keep][order].tolist())]


def _same(printed, expected):
    assert len(printed) == len(expected) > 0
    for (name, score, box), (name_e, score_e, box_e) in zip(printed, expected):
        assert name == name_e and abs(score - score_e) <= 5e-4 and np.allclose(box, box_e, atol=0.051), (box, box_e)


def test_detect_on_a_grey_png_canvas_and_an_rgb_jpeg(run, tmp_path, capsys):
    run_dir, canvases = run
    grey = canvases.images[0].numpy()                                                   # (128, 128)
    Image.fromarray(grey).save(tmp_path / "canvas.png")
    rgb = np.stack([canvases.images[1].numpy()] * 3, axis=-1)
    Image.fromarray(rgb).resize((200, 150), Image.BILINEAR).save(tmp_path / "photo.jpg", quality=95)
    threshold = 0.0  # a model trained 2 steps is not sure of anything: keep every query
    main(["detect", str(tmp_path / "canvas.png"), str(tmp_path / "photo.jpg"), "--checkpoint", str(run_dir),
          "--threshold", str(threshold), "--out", str(tmp_path / "pictures")])
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if not line.startswith("  ")]
    assert len(header) == 2 and header[0].startswith("canvas.png: 8 detections") and "photo.jpg" in header[1]
    rows = _printed(out)
    assert len(rows) == 16  # detr_micro's 8 queries per image
    _same(rows[:8], _by_hand(run_dir, grey, threshold))
    jpeg_grey = np.array(Image.open(tmp_path / "photo.jpg").convert("L"))                 # (150, 200)
    assert jpeg_grey.shape == (150, 200)
    _same(rows[8:], _by_hand(run_dir, jpeg_grey, threshold))
    assert all(0 <= b[0] <= b[2] <= 200 and 0 <= b[1] <= b[3] <= 150 for _, _, b in rows[8:])  # the JPEG's pixels
    for name in ("canvas", "photo"):
        picture = Image.open(tmp_path / "pictures" / f"{name}.detections.png")
        assert picture.format == "PNG" and min(picture.size) > 200

    # one image, the checkpoint folder itself, a threshold: only detections at or above it
    step = run_dir / "checkpoints" / "best"
    scores = sorted({s for _, s, _ in _by_hand(run_dir, grey, 0.0)})
    assert len(scores) > 1  # the queries differ after two steps from a random start
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    main(["detect", str(tmp_path / "canvas.png"), "--checkpoint", str(step), "--threshold", repr(cut),
          "--out", str(tmp_path / "one.png")])
    few = _printed(capsys.readouterr().out)
    assert 0 < len(few) < 8
    _same(few, _by_hand(run_dir, grey, cut))
    assert (tmp_path / "one.png").is_file()


def test_detect_errors_are_one_line(run, tmp_path, capsys):
    run_dir, canvases = run
    image = tmp_path / "canvas.png"
    Image.fromarray(canvases.images[0].numpy()).save(image)
    one_line_error(capsys, ["detect", str(image), "--checkpoint", str(tmp_path / "no-run")], "does not exist")
    one_line_error(capsys, ["detect", str(tmp_path / "nope.png"), "--checkpoint", str(run_dir)], "no such file")
    # a checkpoint of a classification run
    recipe = resolve_recipe("vit-fashion-mnist")
    model = recipe.model.build()
    write_checkpoint(tmp_path / "vit" / "checkpoints" / "best", model, torch.optim.SGD(model.parameters(), lr=0.1),
                     None, {}, recipe=recipe_to_dict(recipe))
    one_line_error(capsys, ["detect", str(image), "--checkpoint", str(tmp_path / "vit")], "not of a detection task")
    # a saved model folder, not a training run
    save_pretrained(from_pretrained(run_dir), tmp_path / "saved")
    one_line_error(capsys, ["detect", str(image), "--checkpoint", str(tmp_path / "saved")], "trainer_state.json")
    one_line_error(capsys, ["detect", str(image), "--checkpoint", str(run_dir), "--threshold", "2"], "--threshold")
    one_line_error(capsys, ["detect", str(image), str(image), "--checkpoint", str(run_dir),
                                             "--out", str(tmp_path / "x.png")], "for one image")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    one_line_error(capsys, ["detect", str(text), "--checkpoint", str(run_dir)], "notes.png")
