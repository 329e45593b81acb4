"""The real pairs with ground truth: documented shapes, dtypes and units, checked against the images
themselves (SIFT matches agree with graf's H and with the stereo disparities), and a clear error
that says how to install the files when they are missing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from relformer.data.matching import STEREO_PAIRS, load_aloe, load_graf, load_motorcycle, opencv_data_dir, pairs
from relformer.interop.opencv import SiftMatcher
from relformer.tasks.matching_metrics import reprojection_error


def test_graf_shapes_and_homography():
    graf = load_graf()
    assert graf.image0.shape == graf.image1.shape == (640, 800, 3) and graf.image0.dtype == np.uint8
    assert graf.H_0to1.shape == (3, 3) and graf.H_0to1.dtype == np.float64 and graf.H_0to1[2, 2] == 1.0


def test_graf_ground_truth_explains_sift_matches():
    graf = load_graf()
    kpts0, kpts1, _ = SiftMatcher(ratio=0.7)(graf.image0, graf.image1)
    assert len(kpts0) > 100
    inliers = lambda H: float((reprojection_error(kpts0, kpts1, H) < 3.0).mean())
    assert inliers(graf.H_0to1) > 0.5  # measured 0.64: the rest are ratio-test outliers
    shifted = np.array([[1.0, 0.0, 8.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ graf.H_0to1
    for wrong in (np.linalg.inv(graf.H_0to1), np.eye(3), shifted):  # a wrong direction, file or offset
        assert inliers(wrong) < 0.2


def _row_matches(left, right):
    """SIFT matches of a rectified pair that lie on one row: left (x, y) -> disparity x_left - x_right."""
    kpts0, kpts1, _ = SiftMatcher(ratio=0.7)(left, right)
    on_row = np.abs(kpts0[:, 1] - kpts1[:, 1]) < 1.0
    return kpts0[on_row], kpts0[on_row, 0] - kpts1[on_row, 0]


@pytest.mark.parametrize("name, shape, unknown, low, high", [
    ("aloe", (1110, 1282), (0.03, 0.04), 43, 211), ("motorcycle", (500, 741), (0.07, 0.08), 7, 60)])
def test_stereo_pairs_load_with_documented_units(name, shape, unknown, low, high):
    pair = STEREO_PAIRS[name]()
    assert pair.left.shape == pair.right.shape == (*shape, 3) and pair.left.dtype == np.uint8
    assert pair.disparity.shape == shape and pair.disparity.dtype == np.float32
    assert unknown[0] < (~pair.valid).mean() < unknown[1]  # unknown disparity is NaN (never 0 or inf)
    assert not np.isinf(pair.disparity).any()
    assert low <= np.nanmin(pair.disparity) and np.nanmax(pair.disparity) <= high
    # the left view's disparity in pixels at this resolution: x_right = x_left - d
    points, measured = _row_matches(pair.left, pair.right)
    columns, rows = np.rint(points).astype(int).T
    truth = pair.disparity[rows, columns]
    known = np.isfinite(truth)
    assert known.sum() > 100
    assert np.median(np.abs(truth[known] - measured[known])) < 1.0
    assert 0.98 < np.median(truth[known] / measured[known]) < 1.02  # scale 1, not a scaled PNG


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("RELFORMER_OPENCV_DATA", str(tmp_path))
    monkeypatch.setattr(pairs, "_DOC_DATA", pairs.Path("share/doc/no-such-package/examples/data"))
    with pytest.raises(FileNotFoundError, match=r"bash run.sh setup.*apt-get install -y opencv-doc"):
        load_graf()
    with pytest.raises(FileNotFoundError, match="RELFORMER_OPENCV_DATA"):
        load_aloe()
    load_motorcycle()  # ships with scikit-image: unaffected


def test_environment_variable_points_elsewhere(tmp_path, monkeypatch):
    source = opencv_data_dir()
    for name in pairs.OPENCV_DATA_FILES:
        (tmp_path / name).symlink_to(source / name)
    monkeypatch.setenv("RELFORMER_OPENCV_DATA", str(tmp_path))
    assert opencv_data_dir() == tmp_path
    (tmp_path / "H1to3p.xml").unlink()
    (tmp_path / "H1to3p.xml").write_text('<?xml version="1.0"?>\n<opencv_storage>\n</opencv_storage>\n')
    with pytest.raises(ValueError, match="no 3x3 matrix 'H13'"):
        load_graf()
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "aloeGT.png").unlink()
    (tmp_path / "rgb.png").rename(tmp_path / "aloeGT.png")
    with pytest.raises(ValueError, match="single-channel"):
        load_aloe()
