"""Helpers for the training tests: a tiny Fashion-MNIST recipe and the CLI as a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TINY_VIT = ["model.name=vit_micro", "model.options.dim=32", "model.options.depth=1", "model.options.num_heads=2"]


def tiny(out: Path, *extra: str, train: int = 1024, eval: int = 256, epochs: int = 2, batch: int = 32,
         checkpoint_every: int = 3) -> list[str]:
    """``--set`` overrides for a run of a few seconds on real Fashion-MNIST images (32 steps an epoch)."""
    sets = [*TINY_VIT, f"data.train_subset={train}", f"data.eval_subset={eval}", f"epochs={epochs}",
            f"batch_size={batch}", "eval_batch_size=64", f"checkpoint_every={checkpoint_every}", "log_every=2",
            "data.augment=true", "loss.label_smoothing=0.1", "optim.warmup_epochs=0.5", f"out_dir={out}", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def cli_env(threads: int = 1) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    env.pop("WORLD_SIZE", None)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "relformer.cli", "train", *args]


def run_cli(*args: str, log: Path, threads: int = 1, timeout: float = 300) -> None:
    """``relformer train ARGS`` in a subprocess; its output goes to ``log``, shown if it fails."""
    with open(log, "w") as f:
        proc = subprocess.run(cli_command(*args), stdout=f, stderr=subprocess.STDOUT, env=cli_env(threads),
                              cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, f"relformer train {' '.join(args)} failed:\n{log.read_text()[-4000:]}"


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of the run's newest checkpoint."""
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(run_dir / "checkpoints" / latest / "model.safetensors")
