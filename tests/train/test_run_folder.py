"""The run folder (issue 19, items 7 and 9): a fresh run manages only its own files, refuses
somebody else's folder and an empty ``--out``; ``--resume`` compares the recipe stored in the
checkpoint (recipe.yaml may be gone) and repairs a stale ``best/``."""
import shutil

import pytest
from safetensors.torch import load_file

from relformer.tasks import resolve_recipe, train
from relformer.train import RecipeError
from relformer.train import checkpoint as ckpt

from . import tiny_task  # noqa: F401  (registers 'tiny-kill')


def tiny(out, *extra):
    return resolve_recipe("tiny-kill", [f"out_dir={out}", "epochs=2", *extra])


def test_fresh_run_keeps_the_users_files(tmp_path):
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "tb" / "mine.txt").write_text("mine")  # the reproduction: a fresh run used to delete tb/
    (run / "notes.txt").write_text("notes")
    train(tiny(run))
    assert (run / "tb" / "mine.txt").read_text() == "mine" and (run / "notes.txt").read_text() == "notes"
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_foreign_folder_file_and_empty_out_are_refused(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(RecipeError, match="is not empty and is not a run folder .*holiday.jpg"):
        train(tiny(foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecipeError, match="is a file, not a folder"):
        train(tiny(tmp_path / "file"))
    with pytest.raises(RecipeError, match="cannot create the run folder"):
        train(tiny(tmp_path / "file" / "run"))
    with pytest.raises(RecipeError, match="out_dir must not be empty"):
        tiny("")


def test_resume_compares_the_recipe_stored_in_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny(run))
    (run / "recipe.yaml").unlink()  # the reproduction: without recipe.yaml a changed lr was accepted
    with pytest.raises(RecipeError, match="recipe differs from the one .* was trained with in optim.lr"):
        train(tiny(run, "optim.lr=0.5"), resume=True)
    with pytest.raises(RecipeError, match="already holds checkpoints"):
        train(tiny(run))


def test_resume_repairs_a_stale_best(tmp_path):
    """Item 7: best/ holding an older epoch than the trainer state says; --resume rebuilds it."""
    run = tmp_path / "run"
    train(tiny(run))
    root = run / "checkpoints"
    best_step = ckpt.verify_checkpoint(root / "best")["step"]
    older = next(p for p in sorted(root.glob("step-*")) if p.name != f"step-{best_step:08d}")
    shutil.rmtree(root / "best")
    shutil.copytree(older, root / "best")
    with pytest.warns(UserWarning, match=f"rebuilt .*best from step-{best_step:08d} \\(held step"):
        train(tiny(run), resume=True)
    assert ckpt.verify_checkpoint(root / "best")["step"] == best_step
    a, b = load_file(root / "best" / ckpt.MODEL_FILE), load_file(root / f"step-{best_step:08d}" / ckpt.MODEL_FILE)
    assert all(a[k].equal(b[k]) for k in a)
