"""Fuzzing recipe parsing (issue 19): random ``--set key=value`` strings and random YAML
mappings give a validated recipe or a RecipeError (a ValueError) whose message names the key —
never another exception. Budget: tests/fuzz.py (``RELFORMER_FUZZ=deep`` for release checks)."""
import dataclasses

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from relformer.tasks import load_recipe, parse_recipe, resolve_recipe
from relformer.train.recipe import Recipe, RecipeError, apply_overrides, recipe_to_dict

from ..fuzz import budget

BASE = resolve_recipe("vit-fashion-mnist")


def dotted_keys(value, prefix=""):
    if isinstance(value, dict):
        return [k for name, v in value.items() for k in dotted_keys(v, f"{prefix}{name}.")] + ([prefix[:-1]] if prefix else [])
    return [prefix[:-1]]


def test_an_empty_option_value_stays_yaml_representable():
    """Found by the fuzzer: ``--set model.options.stem=`` stored a str subclass recipe.yaml could not hold."""
    recipe = apply_overrides(BASE, ["model.options.stem="])
    assert type(recipe.model.options["stem"]) is str
    assert yaml.safe_load(yaml.safe_dump(recipe_to_dict(recipe)))["model"]["options"]["stem"] == ""


def test_a_yaml_alias_that_refers_to_itself_is_a_recipe_error(tmp_path):
    """Found by the fuzzer: ``--set model.options.stem='&a [*a]'`` built a list holding itself
    (RecursionError when the recipe was written out)."""
    with pytest.raises(RecipeError, match="model.options.stem: .* refers to itself"):
        apply_overrides(BASE, ["model.options.stem=&a [*a]"])
    path = tmp_path / "loop.yaml"
    path.write_text("task: classification\nmodel: {options: {x: &a [*a]}}\n")
    with pytest.raises(RecipeError, match="refers to itself"):
        load_recipe(path)


KEYS = sorted(set(dotted_keys(recipe_to_dict(BASE))))
TRICKY = ["inf", "-inf", "nan", "1e308", "-1", "0", "1e-400", "10" * 40, "null", "~", "true", "[]", "[1, 2]",
          "[0.9, 0.95, 1]", "{a: 1}", "{", "'", "&a [*a]", "!!python/object/apply:os.system ['echo x']",
          "2001-01-01", "0x10", "1_000", ".inf", "\x00", "\ud800", " ", "bf16", "classification"]
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=0, max_size=12),
                 st.builds(lambda k, t: f"{k}.{t}", st.sampled_from(KEYS), st.text(max_size=6)))
texts = st.one_of(st.sampled_from(TRICKY), st.text(max_size=20), st.floats().map(repr), st.integers().map(str))


def names_a_key(message: str, key: str) -> bool:
    """The message holds the key's first part, as typed or as repr() shows it, or the --set item."""
    first = key.strip().split(".")[0].strip()
    return first in message or repr(first)[1:-1] in message or "--set" in message


@budget(300)
@given(st.lists(st.tuples(keys, texts), min_size=1, max_size=3))
def test_set_overrides_give_a_recipe_or_a_recipe_error_naming_the_key(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        recipe = apply_overrides(BASE, overrides)
    except RecipeError as e:
        keys_as_parsed = [item.partition("=")[0] for item in overrides]  # a key may itself hold '='
        assert any(names_a_key(str(e), k) for k in keys_as_parsed), (overrides, str(e))
        event("RecipeError naming the key")
        return
    event("valid recipe")
    assert isinstance(recipe, type(BASE))
    recipe.validate()
    yaml.safe_load(yaml.safe_dump(recipe_to_dict(recipe)))  # what recipe.yaml will hold


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))


def nested(children):
    return st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3))


yaml_values = st.recursive(scalars, nested, max_leaves=8)
section_keys = st.one_of(st.sampled_from([f.name for f in dataclasses.fields(BASE)]), st.text(max_size=8),
                         st.integers())


@budget(300)
@given(st.dictionaries(section_keys, yaml_values, max_size=5), st.sampled_from(["classification", "detection",
                                                                                "graph_regression", "nope", 3]))
def test_yaml_mappings_give_a_recipe_or_a_recipe_error(data, task):
    data = {**data, "task": task}
    try:
        recipe = parse_recipe(data)
    except RecipeError as e:
        assert str(e)
        event("RecipeError")
        return
    event("valid recipe")
    assert isinstance(recipe, Recipe)
