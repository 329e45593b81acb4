"""LoFTR (relformer.models.matching.loftr) against kornia.feature.LoFTR with the same random weights
(kornia ships LoFTR's architecture; never downloaded), on real photo pairs: graf1 -> graf3 (opencv-doc,
a viewpoint change) and skimage's motorcycle stereo pair. Then masks and batches of pairs of different
sizes, bad input, save / load and the training loss."""
import copy
import os
import sys
from pathlib import Path

import cv2
import kornia
import numpy as np
import pytest
import skimage.data
import torch
from kornia.feature.loftr.loftr import default_cfg

from relformer.models import create_model, from_pretrained
from relformer.models.matching import loftr as L

# The equivalence runs in float64, where relformer and kornia agree to ~1e-12 (their summation orders differ:
# linear attention's sums, the fused k/v projection, the fine expectation as one attention step); the
# tolerances are the issue's. In float32 the same orders move the fine keypoints by up to ~2e-4 px (the
# fine heatmap is a sharp softmax of large random-weight features), hence FLOAT32_KEYPOINT_ATOL.
KEYPOINT_ATOL = 1e-4  # pixels
CONF_ATOL = 1e-5
FLOAT32_KEYPOINT_ATOL = 1e-3
FEATURE_TOL = dict(rtol=1e-9, atol=1e-9)  # float64 tensors

# kornia's default config with relformer's loftr_micro widths
MICRO_CFG = copy.deepcopy(default_cfg)
MICRO_CFG["resnetfpn"] = {"initial_dim": 32, "block_dims": [32, 64, 128]}
MICRO_CFG["coarse"].update(d_model=128, d_ffn=128, nhead=4)
MICRO_CFG["fine"].update(d_model=32, d_ffn=32, nhead=4)


def opencv_data() -> Path:
    """opencv-doc's examples/data (RELFORMER_OPENCV_DATA, beside the environment, or the system package)."""
    candidates = [os.environ.get("RELFORMER_OPENCV_DATA"),
                  Path(sys.prefix) / "share/opencv-doc/usr/share/doc/opencv-doc/examples/data",
                  "/usr/share/doc/opencv-doc/examples/data"]
    for c in candidates:
        if c and (Path(c) / "graf1.png").is_file():
            return Path(c)
    raise FileNotFoundError(f"opencv-doc's graf1.png not found in {candidates} (run.sh installs it)")


def _tensor(gray: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (H, W) -> (1, 1, h, w) float in [0, 1] at ``size = (w, h)``."""
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).float()[None, None] / 255


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@pytest.fixture(scope="module")
def pairs():
    """Two real pairs at small sizes, the two images of a pair of different sizes (not multiples of 8)."""
    d = opencv_data()
    graf = [cv2.imread(str(d / n), cv2.IMREAD_GRAYSCALE) for n in ("graf1.png", "graf3.png")]
    moto = [_gray(skimage.data.stereo_motorcycle()[i]) for i in (0, 1)]
    return {"graf": (_tensor(graf[0], (200, 160)), _tensor(graf[1], (190, 154))),
            "motorcycle": (_tensor(moto[0], (180, 128)), _tensor(moto[1], (176, 134)))}


def _kornia(config=MICRO_CFG, dtype=torch.float64, **match):
    cfg = copy.deepcopy(config)
    cfg["match_coarse"].update(match)
    torch.manual_seed(0)
    return kornia.feature.LoFTR(pretrained=None, config=cfg).eval().to(dtype)


def _mine(reference, name="loftr_micro", **overrides):
    model = create_model(name, **overrides).eval()
    model.load_state_dict(L.from_kornia_state(reference.state_dict()))
    return model.to(next(reference.parameters()).dtype)


@pytest.fixture(scope="module")
def reference():
    """kornia's LoFTR at loftr_micro's widths, random weights (seed 0), float64."""
    return _kornia()


@pytest.fixture(scope="module")
def pairs64(pairs):
    return {k: tuple(im.double() for im in v) for k, v in pairs.items()}


def _assert_same_matches(got, want, keypoint_atol=KEYPOINT_ATOL):
    for key in ("keypoints0", "keypoints1", "confidence", "batch_indexes"):
        assert got[key].shape == want[key].shape and got[key].dtype == want[key].dtype, key
    order_g = torch.argsort(got["batch_indexes"] * 1e6 + got["keypoints0"][:, 1] * 1e3 + got["keypoints0"][:, 0])
    order_w = torch.argsort(want["batch_indexes"] * 1e6 + want["keypoints0"][:, 1] * 1e3 + want["keypoints0"][:, 0])
    assert torch.equal(got["batch_indexes"][order_g], want["batch_indexes"][order_w])
    assert torch.equal(got["keypoints0"][order_g], want["keypoints0"][order_w])  # the coarse cells of image 0
    # the coarse cell of image 1: keypoints1 within half a window of the same centre
    torch.testing.assert_close(got["keypoints1"][order_g], want["keypoints1"][order_w], rtol=0, atol=keypoint_atol)
    torch.testing.assert_close(got["confidence"][order_g], want["confidence"][order_w], rtol=1e-4, atol=CONF_ATOL)


def test_kornia_weights_map_onto_every_parameter():
    """relformer's loftr is kornia's default LoFTR: every weight maps, with its shape."""
    reference = _kornia(default_cfg, torch.float32)
    model = create_model("loftr")
    state = L.from_kornia_state(reference.state_dict())
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state)  # strict: shapes too
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


def test_backbone_positions_transformer_and_confidence_match_kornia(reference, pairs64):
    model = _mine(reference)
    image0, image1 = pairs64["graf"]
    with torch.no_grad():
        for image in (image0, image1):
            for got, want in zip(model.backbone(image), reference.backbone(image)):
                torch.testing.assert_close(got, want, **FEATURE_TOL)
        feats = model.features({"image0": image0, "image1": image1})
        want = [reference.extract_features(im) for im in (image0, image1)]
        for s in (0, 1):
            tokens = want[s]["coarse"].flatten(2).transpose(1, 2)
            torch.testing.assert_close(feats[s].tokens, tokens, **FEATURE_TOL)
        f0, f1, conf = model.coarse(feats)
        k0, k1 = reference.loftr_coarse(feats[0].tokens, feats[1].tokens)
        torch.testing.assert_close(f0, k0, **FEATURE_TOL)
        torch.testing.assert_close(f1, k1, **FEATURE_TOL)
        data = {"hw0_c": feats[0].grid, "hw1_c": feats[1].grid, "stride_c": 8}
        reference.coarse_matching(k0, k1, data)
        torch.testing.assert_close(conf, data["conf_matrix"], rtol=1e-9, atol=1e-15)


def _match_both(reference, model, image0, image1, threshold):
    reference.coarse_matching.thr = threshold
    try:
        with torch.no_grad():
            return model({"image0": image0, "image1": image1}), reference({"image0": image0, "image1": image1})
    finally:
        reference.coarse_matching.thr = default_cfg["match_coarse"]["thr"]


@pytest.mark.parametrize("pair", ["graf", "motorcycle"])
@pytest.mark.parametrize("threshold", [0.0, 1e-3])
def test_matches_equal_kornia(reference, pairs64, pair, threshold):
    """The same coarse matches, fine keypoints within 1e-4 px and confidences within 1e-5 (random weights
    give low confidences: the thresholds are low so that matches exist; the released 0.2 is tested below)."""
    got, want = _match_both(reference, _mine(reference, match_threshold=threshold), *pairs64[pair], threshold)
    assert len(want["confidence"]) > 0
    _assert_same_matches(got, want)


def test_released_threshold_equals_kornia_and_empty_output_is_well_formed(reference, pairs64):
    got, want = _match_both(reference, _mine(reference), *pairs64["motorcycle"], default_cfg["match_coarse"]["thr"])
    _assert_same_matches(got, want)
    assert got.keypoints0.shape == (0, 2) and got.batch_indexes.dtype == torch.long  # no match: empty, no crash


def test_default_loftr_equals_kornias_default_in_float32(pairs):
    """The released architecture (11.6M parameters) in float32: the same coarse matches; keypoints within
    FLOAT32_KEYPOINT_ATOL (see the tolerances above)."""
    reference = _kornia(default_cfg, torch.float32)
    got, want = _match_both(reference, _mine(reference, "loftr", match_threshold=0.0), *pairs["graf"], 0.0)
    assert len(want["confidence"]) > 0
    _assert_same_matches(got, want, FLOAT32_KEYPOINT_ATOL)


@pytest.mark.slow
def test_default_loftr_equals_kornias_default_in_float64(pairs64):
    reference = _kornia(default_cfg)
    got, want = _match_both(reference, _mine(reference, "loftr", match_threshold=0.0), *pairs64["motorcycle"], 0.0)
    assert len(want["confidence"]) > 0
    _assert_same_matches(got, want)


def test_fine_refinement_equals_kornia(reference, pairs64):
    """Sub-pixel refinement at 64 arbitrary coarse pairs (not only the few mutual matches)."""
    model = _mine(reference)
    image0, image1 = pairs64["graf"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        feats = model.features({"image0": image0, "image1": image1})
        f0, f1, _ = model.coarse(feats)
        b = torch.zeros(64, dtype=torch.long)
        i = torch.randint(f0.shape[1], (64,), generator=g)
        j = torch.randint(f1.shape[1], (64,), generator=g)
        xy, std = model.refine(feats, f0, f1, b, i, j)
        data = {"b_ids": b, "i_ids": i, "j_ids": j, "stride_c": 8, "stride_f": 2, "mconf": torch.ones(64),
                "mkpts0_c": torch.zeros(64, 2, dtype=torch.float64),
                "mkpts1_c": torch.zeros(64, 2, dtype=torch.float64)}
        w0, w1 = reference.fine_preprocess(feats[0].fine, feats[1].fine, f0, f1, data)
        w0, w1 = reference.loftr_fine(w0, w1)
        reference.fine_matching(w0, w1, data)
    torch.testing.assert_close(xy, data["expec_f"][:, :2], **FEATURE_TOL)
    torch.testing.assert_close(std, data["expec_f"][:, 2], **FEATURE_TOL)


def test_transformer_gradients_equal_kornia(reference, pairs64):
    """Backward of the coarse transformer (with padding masks): gradients of the tokens and of every weight."""
    model = _mine(reference)
    with torch.no_grad():
        feats = model.features(dict(zip(("image0", "image1"), pairs64["motorcycle"])))
    t0, t1 = feats[0].tokens.repeat(2, 1, 1), feats[1].tokens.repeat(2, 1, 1)
    m0 = torch.ones(t0.shape[:2], dtype=torch.bool)
    m1 = torch.ones(t1.shape[:2], dtype=torch.bool)
    m0[1, -40:], m1[1, -25:] = False, False
    g = torch.Generator().manual_seed(4)
    r0, r1 = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (t0, t1))

    def run(transformer):
        x0, x1 = t0.clone().requires_grad_(True), t1.clone().requires_grad_(True)
        y0, y1 = transformer(x0, x1, m0, m1)
        ((y0 * r0 * m0[..., None]).sum() + (y1 * r1 * m1[..., None]).sum()).backward()
        return x0.grad, x1.grad

    for a, b in zip(run(model.coarse_transformer), run(reference.loftr_coarse)):
        torch.testing.assert_close(a, b, **FEATURE_TOL)
    mapped = L.from_kornia_state({n: p.grad for n, p in reference.named_parameters() if n.startswith("loftr_coarse.")})
    names = [n for n, _ in model.named_parameters() if n.startswith("coarse_transformer.")]
    assert sorted(names) == sorted(mapped)
    for name, p in model.named_parameters():
        if name in mapped:
            torch.testing.assert_close(p.grad, mapped[name], **FEATURE_TOL)
    reference.zero_grad()


def test_softmax_attention_equals_kornia_full_attention(pairs64):
    cfg = copy.deepcopy(MICRO_CFG)
    cfg["coarse"]["attention"] = cfg["fine"]["attention"] = "full"
    reference = _kornia(cfg)
    model = _mine(reference, attention="softmax", match_threshold=0.0)
    got, want = _match_both(reference, model, *pairs64["graf"], 0.0)
    assert len(want["confidence"]) > 0
    _assert_same_matches(got, want)


def _select(out, b):
    keep = out["batch_indexes"] == b
    return {k: (v[keep] if k != "batch_indexes" else torch.zeros_like(v[keep])) for k, v in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_batch_of_pairs_of_different_sizes_equals_one_by_one(pairs64, attention):
    """Three pairs of different sizes, padded into one batch with masks: each pair's matches as alone
    (float64: the padding changes no value, only summation orders)."""
    pairs = pairs64
    model = create_model("loftr_micro", attention=attention, match_threshold=0.0).eval().double()
    images0 = [pairs["graf"][0], pairs["motorcycle"][0], pairs["graf"][1][..., :120, :136]]
    images1 = [pairs["graf"][1], pairs["motorcycle"][1], pairs["motorcycle"][0][..., 8:, :]]
    (image0, mask0), (image1, mask1) = L.pad_images(images0), L.pad_images(images1)
    with torch.no_grad():
        batched = model({"image0": image0, "image1": image1, "mask0": mask0, "mask1": mask1})
        singles = [model({"image0": a, "image1": b}) for a, b in zip(images0, images1)]
    assert all(len(s["confidence"]) > 0 for s in singles)
    for b, single in enumerate(singles):
        _assert_same_matches(_select(batched, b), dict(single))


def test_full_masks_equal_no_masks(pairs):
    model = create_model("loftr_micro", match_threshold=0.0).eval()
    image0, image1 = pairs["motorcycle"]
    masks = {"mask0": torch.ones(image0.shape[0], *image0.shape[2:]), "mask1": torch.ones(1, *image1.shape[2:])}
    with torch.no_grad():
        plain = model({"image0": image0, "image1": image1})
        masked = model({"image0": image0, "image1": image1, **masks})
    _assert_same_matches(masked, plain)


def _small_model():
    return create_model("loftr_micro").eval()


@pytest.mark.parametrize("data, error, match", [
    ({"image0": torch.rand(1, 3, 64, 64), "image1": torch.rand(1, 1, 64, 64)}, ValueError, "image0 has 3 channels"),
    ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(1, 3, 64, 64)}, ValueError, "image1 has 3 channels"),
    ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(1, 1, 6, 64)}, ValueError, "image1 is .* at least 8x8"),
    ({"image0": torch.rand(1, 1, 7, 7), "image1": torch.rand(1, 1, 64, 64)}, ValueError, "image0 is .* at least 8x8"),
    ({"image0": torch.full((1, 1, 64, 64), float("nan")), "image1": torch.rand(1, 1, 64, 64)}, ValueError,
     "image0 contains NaN"),
    ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(2, 1, 64, 64)}, ValueError, "same number"),
    ({"image0": torch.rand(1, 1, 64, 64)}, ValueError, "image1"),
    ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(1, 1, 64, 64), "features0": 1}, ValueError,
     "takes image0"),
    ({"image0": torch.randint(0, 255, (1, 1, 64, 64)), "image1": torch.rand(1, 1, 64, 64)}, ValueError,
     "image0 must be floating point"),
    ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(1, 1, 64, 64), "mask0": torch.ones(1, 64, 63)},
     ValueError, "mask0 must be a"),
    ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(1, 1, 64, 64),
      "mask1": torch.ones(1, 64, 64).tril().bool()}, ValueError, "mask1 must mark a top-left rectangle"),
    ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(1, 1, 64, 64),
      "mask1": torch.zeros(1, 64, 64).index_fill(1, torch.arange(4), 1)}, ValueError, "mask1 leaves fewer"),
    ([torch.rand(1, 1, 64, 64)] * 2, TypeError, "dict"),
])
def test_bad_input_names_the_argument(data, error, match):
    with pytest.raises(error, match=match):
        _small_model()(data)


@pytest.mark.parametrize("option, value", [("fine_window", 4), ("attention", "full"), ("temperature", 0.0),
                                           ("layer_types", ("self", "crosss")), ("backbone_dims", (32, 64)),
                                           ("num_heads", 3), ("border", -1)])
def test_bad_config_names_the_option(option, value):
    with pytest.raises(ValueError, match=f"LoFTRConfig.{option}"):
        create_model("loftr_micro", **{option: value})


@pytest.mark.parametrize("size, border", [((8, 8), 0), ((8, 16), 2), ((24, 16), 1)])
def test_tiny_images_give_few_or_no_matches_without_crashing(size, border):
    model = create_model("loftr_micro", border=border, match_threshold=0.0).eval()
    with torch.no_grad():
        out = model({"image0": torch.rand(2, 1, *size), "image1": torch.rand(2, 1, *size)})
    cells = max(0, size[0] // 8 - 2 * border) * max(0, size[1] // 8 - 2 * border)
    assert len(out.confidence) <= 2 * cells
    assert all(torch.isfinite(v.float()).all() for v in out.values())
    assert out.keypoints1.shape == (len(out.confidence), 2)


def test_output_reads_like_kornias_dict(pairs):
    model = create_model("loftr_micro", match_threshold=0.0).eval()
    with torch.no_grad():
        out = model({"image0": pairs["graf"][0], "image1": pairs["graf"][1]})
    assert list(out.keys()) == ["keypoints0", "keypoints1", "confidence", "batch_indexes"]
    assert out["keypoints0"] is out.keypoints0 and set(dict(out)) == set(out.keys())


def test_save_and_load_round_trip(tmp_path, pairs):
    model = create_model("loftr_micro", match_threshold=0.0).eval()
    model.save_pretrained(tmp_path / "loftr")
    loaded = L.LoFTR.from_pretrained(tmp_path / "loftr")
    assert loaded.config == model.config and type(from_pretrained(tmp_path / "loftr")) is L.LoFTR
    data = {"image0": pairs["graf"][0], "image1": pairs["graf"][1]}
    with torch.no_grad():
        a, b = model(data), loaded(data)
    assert len(a.confidence) > 0
    for key in a.keys():
        assert torch.equal(a[key], b[key])


def test_homography_targets_of_a_translation():
    """A shift by one coarse cell right and two down: cell (x, y) corresponds to (x + 1, y + 2)."""
    H = torch.tensor([[[1.0, 0, 8], [0, 1, 16], [0, 0, 1]]])
    t = L.homography_targets(H, (64, 80), (64, 80))
    w = 10
    x0, y0 = t.i_ids % w, t.i_ids // w
    assert torch.equal(t.j_ids, (y0 + 2) * w + x0 + 1)
    torch.testing.assert_close(t.points1, torch.stack([x0, y0], 1).float() * 8 + torch.tensor([8.0, 16.0]))
    assert len(t.i_ids) == (8 - 2) * (10 - 1)  # cells whose shifted pixel stays inside the 80 x 64 image


def _warped_pair():
    """skimage's camera and a perspective warp of it, with the homography (cv2's pixel frame)."""
    image = cv2.resize(skimage.data.camera(), (96, 96), interpolation=cv2.INTER_AREA)
    H = np.array([[0.9, 0.08, 6.0], [-0.05, 0.95, 4.0], [2e-4, 1e-4, 1.0]])
    warped = cv2.warpPerspective(image, H, (96, 88))
    to = lambda a: torch.from_numpy(a).float()[None, None] / 255  # noqa: E731
    return to(image), to(warped), torch.from_numpy(H).float()[None]


@pytest.mark.slow
def test_loss_reaches_every_parameter_and_training_lowers_it():
    image0, image1, H = _warped_pair()
    data = {"image0": image0, "image1": image1}
    targets = L.homography_targets(H, image0.shape[2:], image1.shape[2:])
    assert len(targets.i_ids) > 20
    model = create_model("loftr_micro").train()
    terms = model.loss(data, targets)
    assert set(terms) == {"coarse", "fine", "loss"} and all(torch.isfinite(v) and v > 0 for v in terms.values())
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = terms["coarse"].item()
    for _ in range(4):
        opt.zero_grad()
        terms = model.loss(data, targets)
        terms["loss"].backward()
        opt.step()
    assert model.loss(data, targets)["coarse"].item() < first


def test_pad_images_pads_top_left_and_rejects_mixed_channels():
    a, b = torch.rand(1, 1, 10, 12), torch.rand(1, 14, 9)
    batch, mask = L.pad_images([a, b])
    assert batch.shape == (2, 1, 14, 12) and mask.shape == (2, 14, 12)
    assert torch.equal(batch[0, :, :10, :12], a[0]) and torch.equal(batch[1, 0, :14, :9], b[0])
    assert mask[0].sum() == 120 and mask[1].sum() == 126 and (batch[~mask[:, None].expand_as(batch)] == 0).all()
    with pytest.raises(ValueError, match="channel count"):
        L.pad_images([a, torch.rand(3, 8, 8)])
