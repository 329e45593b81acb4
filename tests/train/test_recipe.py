"""Recipes: typed parsing, clear errors naming the key, YAML round trip, --set overrides."""
import re

import pytest
import torch

from relformer.models import create_model

from relformer.cli import main
from relformer.tasks.classification import ClassificationRecipe
from relformer.tasks import load_recipe, resolve_recipe
from relformer.train.recipe import RecipeError, apply_overrides, recipe_diff, recipe_to_yaml


def test_registered_recipes_resolve_with_their_models():
    for name, model in (("vit-fashion-mnist", "vit_micro"), ("swin-fashion-mnist", "swin_micro")):
        recipe = resolve_recipe(name)
        assert isinstance(recipe, ClassificationRecipe) and recipe.model.name == model and recipe.name == name
        recipe.validate()
        net = create_model(recipe.model.name, **recipe.model.options)  # sized for 28x28 grey images, 10 classes
        assert net(torch.zeros(2, 1, 28, 28)).logits.shape == (2, 10)


def test_set_nested_and_dict_options_parse_to_the_field_types():
    r = resolve_recipe("vit-fashion-mnist", ["optim.lr=3e-4", "model.options.depth=4", "model.options.mlp_ratio=1.5",
                                             "optim.betas=[0.9, 0.95]", "data.train_subset=100", "amp=bf16",
                                             "compile=true", "data.root=null", "out_dir=runs/x", "epochs=3.0"])
    assert r.optim.lr == 3e-4 and isinstance(r.optim.lr, float)  # YAML alone would leave '3e-4' a string
    assert r.model.options == {**resolve_recipe("vit-fashion-mnist").model.options, "depth": 4, "mlp_ratio": 1.5}
    assert r.optim.betas == (0.9, 0.95) and r.data.train_subset == 100 and r.epochs == 3
    assert r.amp == "bf16" and r.compile is True and r.data.root is None and r.out_dir == "runs/x"
    assert recipe_diff(resolve_recipe("vit-fashion-mnist"), r) == [
        "amp", "compile", "data.train_subset", "epochs", "model.options.depth", "model.options.mlp_ratio",
        "optim.betas", "optim.lr", "out_dir"]


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1e-3", "unknown key 'optim.lrr' (did you mean 'optim.lr'"),
    ("epoch=3", "unknown key 'epoch' (did you mean 'epochs'"),
    ("data.agument=true", "unknown key 'data.agument' (did you mean 'data.augment'"),
    ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
    ("epochs=2.5", "epochs: expected int"),
    ("compile=1", "compile: expected bool"),
    ("amp=fp16", "amp: expected one of 'none', 'bf16'"),
    ("optim.betas=[0.9]", "optim.betas: expected 2 values"),
    ("data.train_subset=many", "data.train_subset: expected"),
    ("optim.lr.x=1", "'optim.lr' is a value, not a section"),
    ("optim.lr", "--set expects key=value"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("loss.label_smoothing=1.5", "loss.label_smoothing must lie in [0, 1)"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RecipeError) as e:
        resolve_recipe("vit-fashion-mnist", [override])
    assert message in str(e.value)


def test_yaml_round_trip_and_file_recipes(tmp_path):
    recipe = resolve_recipe("swin-fashion-mnist", ["optim.betas=[0.8, 0.9]", "model.options.depths=[1, 1]",
                                                   "data.eval_subset=10"])
    path = tmp_path / "mine.yaml"
    path.write_text(recipe_to_yaml(recipe))
    loaded = load_recipe(path)
    assert loaded == recipe and isinstance(loaded.optim.betas, tuple)
    assert resolve_recipe(str(path), ["epochs=1"]).epochs == 1

    path.write_text("task: classification\nmodel: {name: vit_micro}\noptim: {lr: 2e-3}\n")
    partial = resolve_recipe(str(path))
    assert partial.name == "mine" and partial.optim.lr == 2e-3 and partial.epochs == 10  # defaults fill in
    path.write_text("model: {name: vit_micro}\n")
    with pytest.raises(RecipeError, match="missing key 'task'"):
        resolve_recipe(str(path))
    path.write_text("task: clasification\n")
    with pytest.raises(RecipeError, match="unknown task 'clasification' \\(did you mean 'classification'"):
        resolve_recipe(str(path))
    path.write_text("task: classification\noptim: {lr: 1e-3, wd: 0.1}\n")
    with pytest.raises(RecipeError, match="unknown key 'optim.wd'"):
        resolve_recipe(str(path))
    with pytest.raises(RecipeError, match="unknown recipe 'vit-fashion-mnst' \\(did you mean 'vit-fashion-mnist'"):
        resolve_recipe("vit-fashion-mnst")


def test_unknown_model_option_is_a_clear_error(tmp_path, capsys):
    recipe = apply_overrides(resolve_recipe("vit-fashion-mnist"), ["model.options.depht=2"])
    with pytest.raises(RecipeError, match="depht"):
        recipe.model.build()
    with pytest.raises(SystemExit) as exit_:
        main(["train", "vit-fashion-mnist", "--set", "model.options.depht=2", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert re.fullmatch(r"relformer: error: .*has no option 'depht' \(did you mean 'depth'.*\n", capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # the error comes before anything is written


def test_list_prints_the_recipes(capsys):
    main(["train", "--list"])
    out = capsys.readouterr().out
    assert "vit-fashion-mnist" in out and "swin-fashion-mnist" in out
