"""One-call save / load: ``save_pretrained`` -> ``from_pretrained`` gives the same outputs (eval mode,
exactly) for every registered variant (the hf_* / pyg_* peers and the graph models included); ``config.json``
holds the class, every field, the variant and relformer's version; training run folders load in one
call (``best/``, else ``latest``); damaged or mismatched folders fail with errors that name the
problem; ``create_model(pretrained=...)``."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import relformer
import relformer.interop.pyg  # noqa: F401  (registers the pyg_* peer variants: they round-trip too)
import relformer.interop.transformers  # noqa: F401  (and the hf_* ones)
import relformer.interop.pyg_temporal  # noqa: F401  (and pyg_tgn)
from relformer.data.temporal import EventStream, TemporalNeighborSampler
from relformer.models import (DETRConfig, GPSConfig, GraphormerConfig, GTConfig, PretrainedMixin, SentenceEncoder,
                              SwinConfig, TextConfig, TextEncoder, ViT, ViTConfig, create_model, from_pretrained,
                              list_models, model_config, save_config, save_pretrained, shipped_weights)
from relformer.models.detection import RTDETRConfig
from relformer.models.matching import GMFlowConfig, LightGlueConfig, LoFTRConfig
from relformer.models.temporal import DyGFormerConfig, TemporalContext, TodyformerConfig
from relformer.models.text.checkpoint import minilm_l6_path
from relformer.train.checkpoint import CheckpointDir
from relformer.models.grounding import GroundingConfig
from tests.models.test_graph import random_graphs
from tests.models.test_grounding import random_batch

PEERS = ("hf_", "pyg_")  # other libraries' modules behind relformer configs (interop/)
SLOW = {"bert_base", "swin_tiny", "hf_detr_fashion", "loftr", "transrefer3d", "transrefer3d_plain",
        "referit3dnet"}  # 5-10 s on one core (build, write, read, forward)
MICRO = ["vit_micro", "swin_micro", "text_micro", "lm_micro", "detr_micro", "rtdetr_micro", "gps_micro", "gt_micro",
         "graphormer_micro", "gmflow_micro", "loftr_micro", "lightglue_micro", "todyformer_micro", "transrefer3d_micro",
         "dygformer_micro"]


def _inputs(config, seed: int = 0) -> tuple[tuple, dict]:
    """A small batch the variant's forward takes: ``(args, kwargs)``."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(config, (ViTConfig, SwinConfig)):
        size = config.image_size if isinstance(config.image_size, tuple) else (config.image_size,) * 2
        return (torch.randn(1, config.in_chans, *size, generator=g),), {}
    if isinstance(config, TextConfig):
        ids = torch.randint(0, config.vocab_size, (2, 9), generator=g)
        if config.causal:
            return (ids,), {}
        return (ids,), {"attention_mask": torch.tensor([[1] * 9, [1] * 5 + [0] * 4])}
    if isinstance(config, (DETRConfig, RTDETRConfig)):
        return (torch.randn(2, config.in_channels, 64, 64, generator=g),), {}
    if isinstance(config, (GPSConfig, GTConfig, GraphormerConfig)):
        return (random_graphs(seed=seed, node_types=config.node_types, edge_types=config.edge_types),), {}
    if isinstance(config, LightGlueConfig):
        def image(n):
            return {"keypoints": torch.rand(1, n, 2, generator=g) * 64,
                    "descriptors": torch.randn(1, n, config.input_dim, generator=g),
                    "image_size": torch.tensor([[64.0, 64.0]])}
        return ({"image0": image(12), "image1": image(9)},), {}
    if isinstance(config, LoFTRConfig):
        return ({"image0": torch.rand(1, 1, 64, 80, generator=g), "image1": torch.rand(1, 1, 72, 64, generator=g)},), {}
    if isinstance(config, GMFlowConfig):
        size = (config.in_chans, 2 * config.stride, 3 * config.stride)
        return (torch.rand(1, *size, generator=g), torch.rand(1, *size, generator=g)), {}
    if isinstance(config, (TodyformerConfig, relformer.interop.pyg_temporal.PyGTGNConfig)):
        n, E = config.num_nodes, 60
        feats = torch.randn(E, config.edge_feature_dim, generator=g) if config.edge_feature_dim else None
        s = EventStream(src=torch.randint(n, (E,), generator=g), dst=torch.randint(n, (E,), generator=g),
                        t=torch.arange(E), num_nodes=n, edge_features=feats)
        b = slice(40, 60)
        return (s.src[b], s.dst[b], s.t[b], TemporalContext(s, TemporalNeighborSampler(s))), {}
    if isinstance(config, GroundingConfig):
        return (random_batch(seed=seed),), {}
    if isinstance(config, DyGFormerConfig):
        from tests.models.test_dygformer import random_context
        ctx = random_context(config, seed=seed)
        return (ctx.stream.src[-6:], ctx.stream.dst[-6:].flip(0), ctx.stream.t[-6:], ctx), {}
    raise AssertionError(f"no test input for {type(config).__name__}: add one")


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor of an output (dataclass, tuple, list or dict), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in _tensors(getattr(out, f.name))]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    if hasattr(out, "layers"):  # a KVCache
        return [t for layer in out.layers for t in (layer.k, layer.v)]
    return []


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in list_models()])
def test_save_load_round_trip_gives_equal_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    args, kwargs = _inputs(model.config)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    with torch.no_grad():
        expected, got = _tensors(model(*args, **kwargs)), _tensors(loaded(*args, **kwargs))
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["variant"] == name and data["relformer_version"] == relformer.__version__
    assert data["config_class"] == type(model.config).__name__
    assert data["config"] == json.loads(json.dumps(dataclasses.asdict(model.config)))  # every field


def test_every_relformer_model_class_has_the_methods(tmp_path):
    own = {type(model_config(n)) for n in set(list_models()) if not n.startswith(PEERS)}
    assert own == {type(model_config(n)) for n in MICRO}
    for name in MICRO:
        assert isinstance(create_model(name), PretrainedMixin), name
    model = create_model("vit_micro", num_classes=3)
    model.save_pretrained(tmp_path)
    loaded = ViT.from_pretrained(tmp_path)
    assert loaded.config.num_classes == 3 and loaded.variant == "vit_micro"
    with pytest.raises(TypeError, match="holds a ViT, not a TextEncoder"):
        TextEncoder.from_pretrained(tmp_path)


def test_tied_weights_stay_tied(tmp_path):
    model = create_model("lm_micro")
    save_pretrained(model, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")  # stored once
    loaded = from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.embeddings.word.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def _run_folder(tmp_path, best: bool, latest: bool):
    """A training run's layout: config.json at the root, step folders, best/ and the latest pointer."""
    run = tmp_path / "run"
    models = {}
    for step, seed in (("step-00000010", 1), ("step-00000020", 2)):
        torch.manual_seed(seed)
        models[step] = create_model("vit_micro")
        save_pretrained(models[step], run / "checkpoints" / step)
        (run / "checkpoints" / step / "config.json").unlink()
    save_config(models["step-00000010"].config, run, "vit_micro")
    if best:
        torch.manual_seed(3)
        models["best"] = create_model("vit_micro")
        save_pretrained(models["best"], run / "checkpoints" / "best")
    if latest:
        (run / "checkpoints" / "latest").write_text("step-00000020\n")
    return run, models


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_run_folder_loads_best_else_latest(tmp_path):
    run, models = _run_folder(tmp_path / "a", best=True, latest=True)
    assert _same_weights(from_pretrained(run), models["best"])
    assert _same_weights(from_pretrained(run / "checkpoints" / "step-00000010"), models["step-00000010"])
    run, models = _run_folder(tmp_path / "b", best=False, latest=True)
    assert _same_weights(from_pretrained(run), models["step-00000020"])
    assert _same_weights(create_model("vit_micro", pretrained=run), models["step-00000020"])
    run, _ = _run_folder(tmp_path / "c", best=False, latest=False)
    with pytest.raises(FileNotFoundError, match="checkpoints/best/ or a checkpoints/latest pointer"):
        from_pretrained(run)


def test_run_folder_checks_the_manifest_and_the_pointer(tmp_path):
    run, _ = _run_folder(tmp_path, best=False, latest=True)
    step = run / "checkpoints" / "step-00000020"
    (step / "manifest.json").write_text(json.dumps({"sha256": {"model.safetensors": "0" * 64}}))
    with pytest.raises(ValueError, match="is damaged: its sha256 does not match"):
        from_pretrained(run)
    (run / "checkpoints" / "latest").write_text("../elsewhere\n")
    with pytest.raises(ValueError, match="not a folder inside"):
        from_pretrained(run)


def _edit_config(folder, edit) -> None:
    data = json.loads((folder / "config.json").read_text())
    edit(data)
    (folder / "config.json").write_text(json.dumps(data))


def test_damaged_or_mismatched_folders_fail_by_name(tmp_path):
    save_pretrained(create_model("vit_micro"), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")
    _edit_config(tmp_path, lambda d: d["config"].update(colour="red"))
    with pytest.raises(ValueError, match="ViTConfig has no field 'colour'"):
        from_pretrained(tmp_path)
    _edit_config(tmp_path, lambda d: (d["config"].pop("colour"), d.update(config_class="os.system")))
    with pytest.raises(ValueError, match="unknown config class 'os.system'; known: .*ViTConfig"):
        from_pretrained(tmp_path)
    _edit_config(tmp_path, lambda d: d.update(config_class="ViTConfig") or d["config"].update(dim=63))
    with pytest.raises(ValueError, match="ViTConfig.dim"):
        from_pretrained(tmp_path)
    _edit_config(tmp_path, lambda d: d["config"].update(dim=64, num_classes=7))  # weights of a 10-class head
    mismatch = r"shape mismatch .*head.weight: \(10, 64\) in the file, \(7, 64\) in the model"
    with pytest.raises(ValueError, match=mismatch):
        from_pretrained(tmp_path)
    _edit_config(tmp_path, lambda d: d["config"].update(num_classes=10))
    state = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in state.items() if k != "cls_token"} | {"extra": torch.zeros(1)},
              tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['cls_token'\], unexpected keys \['extra'\]"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        from_pretrained(tmp_path)
    save_pretrained(create_model("vit_micro"), tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json cannot be read as JSON"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json in .*save_config"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        from_pretrained(tmp_path)


def test_pretrained_minilm_equals_the_sentence_encoder():
    assert "minilm_l6" in shipped_weights()
    ours = create_model("minilm_l6", pretrained=True).eval()
    reference = SentenceEncoder.from_pretrained(minilm_l6_path()).encoder
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]])
    mask = (ids != 0).long()
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask), reference(ids, attention_mask=mask)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)


def test_a_hugging_face_folder_is_pointed_to_its_loader():
    with pytest.raises(ValueError, match="is a Hugging Face config \\(model_type='bert'\\).*SentenceEncoder"):
        from_pretrained(minilm_l6_path())


def test_pretrained_errors_name_what_exists(tmp_path):
    with pytest.raises(ValueError, match="'vit_micro' has no shipped weights .* minilm_l6"):
        create_model("vit_micro", pretrained=True)
    with pytest.raises(TypeError, match="pretrained must be a bool or a folder path"):
        create_model("vit_micro", pretrained=3)
    save_pretrained(create_model("vit_micro"), tmp_path)
    with pytest.raises(ValueError, match="does not match ViT: shape mismatch"):
        create_model("vit_micro", pretrained=tmp_path, dim=32, num_heads=2)
    with pytest.raises(TypeError, match="no .config of a registered config class"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_run_folder_of_the_training_engine_loads_in_one_call(tmp_path):
    """The engine's own checkpoint writer (step folders with a sha256 manifest, best/, latest) plus a
    config.json at the run root, as the engine is to write with save_config."""
    model = create_model("lm_micro")
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints = CheckpointDir(tmp_path / "run" / "checkpoints")
    checkpoints.save(10, model, optimizer, scheduler, {"step": 10}, best=True)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    checkpoints.save(20, model, optimizer, scheduler, {"step": 20})
    save_config(model.config, tmp_path / "run", "lm_micro")
    loaded = from_pretrained(tmp_path / "run")
    assert all(torch.equal(v, best[k]) for k, v in loaded.state_dict().items())
    latest = from_pretrained(tmp_path / "run" / "checkpoints" / "step-00000020")
    assert torch.equal(latest.lm_head.weight, model.lm_head.weight)
    assert latest.lm_head.weight is latest.embeddings.word.weight
