"""``relformer match`` / ``relformer flow`` on real pairs (opencv-doc's graf and aloe), their
pictures and saved results, the one-line errors; the matchers behind them (tasks/matchers.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relformer.cli import main
from relformer.data.matching import load_aloe, load_graf, opencv_data_dir
from relformer.models import create_model
from relformer.tasks.matchers import GMFlowMatcher, LightGlueMatcher, LoFTRMatcher, make_flow, make_matcher
from relformer.tasks.matching_metrics import match_precision


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # relformer's one line, or argparse's usage + "relformer flow: error: ..."
    assert last.startswith(("relformer: error:", "relformer match: error:", "relformer flow: error:")), err
    return last


def test_match_draws_the_matches_of_a_real_pair(tmp_path, capsys):
    data = opencv_data_dir()
    out = tmp_path / "pair.png"
    main(["match", str(data / "graf1.png"), str(data / "graf3.png"), "--matcher", "sift", "--out", str(out)])
    assert "sift:" in capsys.readouterr().out and out.stat().st_size > 10_000
    assert "no published weights" in _error(capsys, ["match", str(data / "graf1.png"), str(data / "graf3.png"),
                                                    "--matcher", "loftr", "--out", str(out)])
    assert "no such file" in _error(capsys, ["match", str(tmp_path / "nope.png"), str(data / "graf3.png"),
                                             "--out", str(out)])


def test_flow_saves_the_disparity_of_a_stereo_pair(tmp_path, capsys):
    data = opencv_data_dir()
    out, saved = tmp_path / "flow.png", tmp_path / "disparity.npy"
    main(["flow", str(data / "aloeL.jpg"), str(data / "aloeR.jpg"), "--method", "dis", "--stereo", "--out", str(out),
          "--save", str(saved)])
    aloe = load_aloe()
    disparity = np.load(saved)
    assert disparity.shape == aloe.disparity.shape and out.is_file()
    known = np.isfinite(aloe.disparity)
    assert np.median(np.abs(disparity[known] - aloe.disparity[known])) < 3  # DIS is a fair stereo matcher on aloe
    assert "must end in .npy" in _error(capsys, ["flow", str(data / "aloeL.jpg"), str(data / "aloeR.jpg"), "--method",
                                                 "dis", "--out", str(out), "--save", str(tmp_path / "x.txt")])
    assert "images of one size" in _error(capsys, ["flow", str(data / "aloeL.jpg"), str(data / "graf1.png"),
                                                   "--method", "dis", "--out", str(out)])
    assert "gmflow-homography" in _error(capsys, ["flow", str(data / "aloeL.jpg"), str(data / "aloeR.jpg"),
                                                  "--out", str(out)])


@pytest.mark.slow
def test_lightglue_matcher_finds_more_graf_correspondences_than_sift():
    graf = load_graf()
    matcher = LightGlueMatcher(max_keypoints=1024)
    kpts0, kpts1, scores = matcher(graf.image0, graf.image1)
    assert len(kpts0) == len(kpts1) == len(scores) > 200
    # the published weights on a real viewpoint change: most matches right, more right ones than SIFT's
    precision = match_precision(kpts0, kpts1, graf.H_0to1)
    sift0, sift1, _ = make_matcher("sift")(graf.image0, graf.image1)
    assert precision > 0.5
    assert precision * len(kpts0) > match_precision(sift0, sift1, graf.H_0to1) * len(sift0)


def test_dense_matchers_pad_to_the_stride_and_crop_back():
    torch.manual_seed(0)
    model = create_model("gmflow_micro")
    matcher = GMFlowMatcher(model)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (37, 50, 3), dtype=np.uint8) for _ in range(2))
    flow, disparity = matcher.flow(a, b), matcher.stereo(a, b)
    assert flow.shape == (37, 50, 2) and disparity.shape == (37, 50) and np.isfinite(flow).all()
    padded = torch.nn.functional.pad(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255, (0, 14, 0, 11),
                                     mode="replicate")
    padded1 = torch.nn.functional.pad(torch.from_numpy(b).permute(2, 0, 1)[None].float() / 255, (0, 14, 0, 11),
                                      mode="replicate")
    with torch.no_grad():
        direct = model.eval()(padded, padded1).flow[0, :, :37, :50].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(flow, direct, rtol=0, atol=1e-5)
    loftr = LoFTRMatcher(create_model("loftr_micro", match_threshold=0.0))
    k0, k1, conf = loftr(a, b)
    assert k0.shape == k1.shape and k0.shape[1] == 2 and len(conf) == len(k0)
    with pytest.raises(ValueError, match="uint8"):
        loftr(a.astype(np.float32), b)
    with pytest.raises(ValueError, match="--matcher must be one of"):
        make_matcher("superglue")
    with pytest.raises(ValueError, match="--method must be one of"):
        make_flow("raft")
