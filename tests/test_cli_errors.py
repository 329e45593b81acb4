"""Issue 19, item 10: the inputs that ended in a traceback now end in one line,
``relformer: error: ...`` (or argparse's usage + error), with exit status 2; a bug still raises."""
import pickle

import numpy as np
import pytest
import torch

import relformer.cli as cli
from relformer.cli import main

from .tasks.test_search import Boom


def one_line_error(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(("relformer: error: ", "relformer ")) and "Traceback" not in err, err
    assert match in lines[-1], err
    return lines[-1]


@pytest.fixture
def binary(tmp_path):
    path = tmp_path / "binary.bin"
    path.write_bytes(bytes(range(256)) * 4)
    return path


TRAIN_SETS = [
    ("optim.lr=inf", "optim.lr must be > 0 and finite"),
    ("optim.lr=1e308", "optim.lr must be <= 10.0"),
    ("optim.lr=nan", "optim.lr must be > 0 and finite"),
    ("seed=-1", "seed must lie in [0, 2**63 - 1]"),
    ("optim.eps=inf", "optim.eps must be >= 0 and finite"),
    ("optim.lrr=1", "unknown key 'optim.lrr'"),
    ("model.options.depth=-1", "model (name='vit_micro'"),
    ("data.root=/nonexistent/fashion", "Fashion-MNIST not found in /nonexistent/fashion"),
]


@pytest.mark.parametrize("setting, match", TRAIN_SETS)
def test_train_bad_values(capsys, tmp_path, setting, match):
    one_line_error(capsys, ["train", "vit-fashion-mnist", "--set", setting, "--out", str(tmp_path / "run")], match)


def test_train_cuda_without_a_gpu(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(capsys, ["train", "vit-fashion-mnist", "--set", "device=cuda", "--out", str(tmp_path / "r")],
                   "no CUDA GPU is available")


@pytest.mark.parametrize("out, match", [("", "out_dir must not be empty"), ("/proc/x", "cannot create the run folder"),
                                        ("FILE/run", "cannot create the run folder"), ("FILE", "is a file")])
def test_train_bad_out(capsys, tmp_path, out, match):
    (tmp_path / "FILE").write_text("x")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    one_line_error(capsys, ["train", "vit-fashion-mnist", "--out", out, "--set", "data.train_subset=64"], match)


def test_train_resume_without_checkpoint(capsys, tmp_path):
    one_line_error(capsys, ["train", "vit-fashion-mnist", "--resume", "--out", str(tmp_path / "r")], "no checkpoint")


@pytest.mark.parametrize("command", ["embed", "similar"])
def test_binary_file(capsys, binary, command):
    argv = ["embed", "--file", str(binary)] if command == "embed" else ["similar", "q", "--file", str(binary)]
    one_line_error(capsys, argv, "is not UTF-8 text")


@pytest.mark.parametrize("argv, match", [
    (["similar", "q", "--corpus", "stdlib", "-k", "-1"], "-k: must be >= 1"),
    (["similar", "", "--corpus", "stdlib"], "a query is empty"),
    (["embed", "a", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["embed", "--file", "/nonexistent.txt"], "no such file"),
    (["explain", "--heads", "0"], "--heads: must be >= 1"),
    (["explain", "--head-dim", "0"], "--head-dim: must be >= 1"),
    (["nonsense"], "unknown command"),
])
def test_bad_arguments(capsys, argv, match):
    one_line_error(capsys, argv, match)


def test_a_pickled_cache_is_refused_and_never_run(capsys, tmp_path, monkeypatch):
    """Item 1 through the CLI: a crafted .npz/pickle as --cache runs nothing and is not overwritten."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one line\n")
    evil = tmp_path / "evil.npz"
    ran = tmp_path / "ran"
    np.savez(evil, texts=np.array([Boom(str(ran))], dtype=object))
    before = evil.read_bytes()

    class Encoder:
        path = "stub"

        def encode(self, texts, **kw):
            return torch.nn.functional.normalize(torch.ones(len(texts), 3), dim=-1)

    monkeypatch.setattr(cli, "_encoder", lambda model: Encoder())
    one_line_error(capsys, ["similar", "q", "--file", str(corpus), "--cache", str(evil)], "not a relformer search cache")
    assert not ran.exists() and evil.read_bytes() == before
    evil.write_bytes(pickle.dumps(Boom(str(ran))))
    one_line_error(capsys, ["similar", "q", "--file", str(corpus), "--cache", str(evil)], "refusing to overwrite")
    assert not ran.exists()


def test_a_bug_still_shows_its_traceback(monkeypatch):
    def broken(argv):
        return [][1]  # an IndexError: not a user's mistake

    monkeypatch.setattr(cli, "_explain", broken)
    with pytest.raises(IndexError):
        main(["explain"])

    def torch_type_error(argv):
        torch.zeros(2) + "x"  # a TypeError from outside relformer's own checks

    monkeypatch.setattr(cli, "_explain", torch_type_error)
    with pytest.raises(TypeError):
        main(["explain"])
