"""Checkpoints that a kill at any moment cannot corrupt.

Layout of ``run_dir/checkpoints/``::

    step-00000040/  model.safetensors  optimizer.safetensors  trainer_state.json
    step-00000080/  ...                     (the newest ``keep`` step folders are kept)
    best/           ...                     (the best epoch-end checkpoint so far)
    latest          one line: the name of the newest complete step folder

``model.safetensors`` holds the (uncompiled, unwrapped) module's ``state_dict``;
``optimizer.safetensors`` the optimizer's per-parameter tensors as ``state.<param id>.<key>``;
``trainer_state.json`` everything else: the optimizer's ``param_groups`` and non-tensor state,
the scheduler's ``state_dict`` and the trainer's own progress.

A folder is written under a hidden temporary name beside its final place, each file and the
folder fsynced, then renamed into place; only then is ``latest`` replaced, itself through a
fsynced temporary file and ``os.replace``. Until that last rename ``latest`` names the previous
checkpoint, which is never touched.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = ["CheckpointDir", "write_checkpoint", "read_checkpoint", "model_tensors", "optimizer_tensors",
           "optimizer_state_from", "MODEL_FILE", "OPTIMIZER_FILE", "STATE_FILE"]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ---------------------------------------------------------------------------------------------
# Tensors <-> state dicts
# ---------------------------------------------------------------------------------------------
def model_tensors(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` on the CPU, contiguous, with no two tensors sharing memory (tied
    weights are copied) as safetensors requires."""
    out, seen = {}, set()
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def optimizer_tensors(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """An optimizer ``state_dict`` split into named tensors ``state.<id>.<key>`` and a JSON-able rest."""
    tensors, values = {}, {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"state.{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "values": values}


def optimizer_state_from(tensors: dict[str, Tensor], rest: dict) -> dict:
    """The inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = tensor
    for param_id, param_values in rest["values"].items():
        state.setdefault(int(param_id), {}).update(param_values)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in rest["param_groups"]]  # JSON turned tuples (betas) into lists
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------
# Durable, atomic file-system steps
# ---------------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _install_dir(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final`` (moving an existing ``final`` aside first)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"trainer state holds a {type(value).__name__}, which JSON cannot store: {value!r}")


def write_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, trainer_state: dict) -> Path:
    """Write one checkpoint folder at ``path`` atomically; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_rest = optimizer_tensors(optimizer.state_dict())
    save_file(model_tensors(model), tmp / MODEL_FILE, metadata={"format": "pt"})
    save_file(opt_tensors, tmp / OPTIMIZER_FILE, metadata={"format": "pt"})
    state = {"format": FORMAT, "trainer": trainer_state, "optimizer": opt_rest,
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=_json_default))
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        _fsync(tmp / name)
    _fsync(tmp)
    _install_dir(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> dict:
    """Load a checkpoint folder into ``model`` (and ``optimizer``, ``scheduler``); returns the trainer state."""
    path = Path(path)
    missing = [n for n in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {state.get('format')!r}; this relformer reads {FORMAT}")
    model.load_state_dict(load_file(path / MODEL_FILE))
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state_from(load_file(path / OPTIMIZER_FILE), state["optimizer"]))
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state["trainer"]


# ---------------------------------------------------------------------------------------------
# The run's checkpoint folder
# ---------------------------------------------------------------------------------------------
class CheckpointDir:
    """``run_dir/checkpoints``: step folders, ``best/`` and the ``latest`` pointer."""

    def __init__(self, root: str | os.PathLike, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root, self.keep = Path(root), keep

    @property
    def best(self) -> Path:
        return self.root / "best"

    def latest(self) -> Path | None:
        """The folder ``latest`` names, or None when there is no checkpoint yet."""
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        if not path.is_dir():
            raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
        return path

    def clean(self) -> None:
        """Remove what an interrupted write left behind; put back a ``best/`` that was moved aside."""
        if not self.root.is_dir():
            return
        for leftover in self.root.glob(".*"):
            if leftover.name.startswith(".best.old-") and not self.best.exists():
                os.replace(leftover, self.best)
            elif leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def save(self, step: int, model: nn.Module, optimizer, scheduler, trainer_state: dict) -> Path:
        """Write ``step-<step>``, point ``latest`` at it, drop step folders beyond the newest ``keep``."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = write_checkpoint(self.root / f"step-{step:08d}", model, optimizer, scheduler, trainer_state)
        _write_text_atomic(self.root / "latest", path.name + "\n")
        self._prune(keep_name=path.name)
        return path

    def save_best(self, model: nn.Module, optimizer, scheduler, trainer_state: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return write_checkpoint(self.best, model, optimizer, scheduler, trainer_state)

    def steps(self) -> list[Path]:
        """Step folders, oldest first."""
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def _prune(self, keep_name: str) -> None:
        for path in self.steps()[:-self.keep]:
            if path.name != keep_name:
                shutil.rmtree(path, ignore_errors=True)
