"""Checkpoints that a kill at any instant cannot corrupt, verified by checksum when read.

Layout of ``run_dir/checkpoints/``::

    step-00000040/  model.safetensors  optimizer.safetensors  trainer_state.json  manifest.json
    step-00000080/  ...                 (the newest ``keep`` step folders, and the best one's)
    best/           ...                 (a copy of the best epoch-end step folder)
    latest          one line: the name of the newest published step folder

``model.safetensors`` holds the (uncompiled, unwrapped) module's ``state_dict``;
``optimizer.safetensors`` the optimizer's per-parameter tensors as ``state.<param id>.<key>``;
``trainer_state.json`` everything else (the optimizer's ``param_groups`` and non-tensor state, the
scheduler's ``state_dict``, the trainer's progress and the recipe); ``manifest.json`` the step and
the sha256 of each of those three files (and of ``config.json``, written for models built from a
registered config, which makes the folder loadable with ``relformer.models.from_pretrained``). A
folder is intact when its manifest parses and every
checksum matches, so a truncated, emptied or bit-flipped file is detected, never loaded.

Publish order (:meth:`CheckpointDir.save`), each step atomic (:mod:`relformer.utils`):

1. the step folder is written under a hidden name, fsynced, and renamed into place;
2. if the epoch is the best so far, ``best/`` is replaced by a copy of it (the old ``best/`` is
   moved aside first, and put back by :meth:`CheckpointDir.clean` if the copy never lands);
3. ``latest`` is replaced, naming the new folder: this is the commit point;
4. step folders beyond the newest ``keep`` are removed, except the one ``best/`` copies.

So ``latest`` never names a folder that is not complete, and the trainer state it names always
records a ``best_step`` whose folder still exists: :meth:`CheckpointDir.repair_best` rebuilds
``best/`` from it when a kill left ``best/`` missing, half-replaced, or a step ahead.

``RELFORMER_TEST_PAUSE=<phase>[:<n>]`` (tests only) makes the writer print
``relformer-test-pause: <phase>`` to stderr and sleep at the ``n``-th (default first) time it
reaches ``phase``, so a test can SIGKILL it inside that phase; the phases are :data:`PHASES`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from ..models import config_classes
from ..models.hub import CONFIG_FILE, config_dict
from ..utils import atomic_write_bytes, atomic_write_text, fsync_dir

__all__ = ["CheckpointDir", "CheckpointError", "write_checkpoint", "read_checkpoint", "verify_checkpoint",
           "load_weights", "weights_folder", "read_state", "model_tensors", "optimizer_tensors",
           "optimizer_state_from", "MODEL_FILE", "OPTIMIZER_FILE", "STATE_FILE", "MANIFEST_FILE", "PHASES"]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
FORMAT = 2
_STEP_DIR = re.compile(r"^step-(\d{8})$")
#: where RELFORMER_TEST_PAUSE can stop a save: files written, folder complete, folder renamed into
#: place, old best/ moved aside, new best/ in place, latest replaced
PHASES = ("files", "folder", "installed", "best-aside", "best", "latest")
_reached: dict[str, int] = {}


class CheckpointError(ValueError):
    """A checkpoint folder or ``latest`` pointer that is missing, damaged or foreign; the message says which."""


def _pause(phase: str) -> None:
    """The test hook of the module docstring; a no-op unless ``RELFORMER_TEST_PAUSE`` names ``phase``."""
    wanted = os.environ.get("RELFORMER_TEST_PAUSE")
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != phase:
        return
    _reached[phase] = _reached.get(phase, 0) + 1
    if _reached[phase] == int(nth or 1):
        print(f"relformer-test-pause: {phase}", file=sys.stderr, flush=True)
        time.sleep(3600)


# ---------------------------------------------------------------------------------------------
# Tensors <-> state dicts
# ---------------------------------------------------------------------------------------------
def model_config_json(model: nn.Module) -> bytes | None:
    """``config.json`` for a model built from a registered config (``model.config``), else None (a
    plain module trained from Python has no config to rebuild it from)."""
    model = getattr(model, "module", model)  # DDP
    config = getattr(model, "config", None)
    if config is None or type(config) not in config_classes().values():
        return None
    return (json.dumps(config_dict(config, getattr(model, "variant", None)), indent=2) + "\n").encode()


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


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"trainer state holds a {type(value).__name__}, which JSON cannot store: {value!r}")


# ---------------------------------------------------------------------------------------------
# One checkpoint folder
# ---------------------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _install_dir(tmp: Path, final: Path, aside_phase: str | None = None) -> None:
    """Rename the complete folder ``tmp`` to ``final``, moving an existing ``final`` aside first."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
        if aside_phase:
            _pause(aside_phase)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, trainer_state: dict, step: int = 0, recipe: dict | None = None) -> Path:
    """Write one checkpoint folder at ``path`` atomically (hidden sibling, then a rename); returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_rest = optimizer_tensors(optimizer.state_dict())
    state = {"format": FORMAT, "trainer": trainer_state, "optimizer": opt_rest, "recipe": recipe,
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    files = {MODEL_FILE: save_safetensors(model_tensors(model), metadata={"format": "pt"}),
             OPTIMIZER_FILE: save_safetensors(opt_tensors, metadata={"format": "pt"}),
             STATE_FILE: json.dumps(state, indent=1, default=_json_default).encode()}
    config = model_config_json(model)
    if config is not None:  # a registry model: the folder loads with relformer.models.from_pretrained
        files[CONFIG_FILE] = config
    for name, data in files.items():
        atomic_write_bytes(tmp / name, data)
    _pause("files")
    manifest = {"format": FORMAT, "step": int(step), "sha256": {name: _sha256(data) for name, data in files.items()}}
    atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1))
    _pause("folder")
    _install_dir(tmp, path)
    return path


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path.parent} is incomplete: missing {path.name}") from None
    except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 errors
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is not a {what}")
    return value


_CHECKED = {MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, CONFIG_FILE}  # config.json: registry models only


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """The manifest of an intact checkpoint folder; :class:`CheckpointError` naming the damage otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    manifest = _read_json(path / MANIFEST_FILE, "checkpoint manifest")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {manifest.get('format')!r}; this relformer reads {FORMAT}")
    sums = manifest.get("sha256")
    if not isinstance(sums, dict) or not {MODEL_FILE, OPTIMIZER_FILE, STATE_FILE} <= set(sums) <= _CHECKED \
            or not isinstance(manifest.get("step"), int):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} does not list the checkpoint's files")
    for name, expected in sums.items():
        try:
            data = (path / name).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {name}") from None
        if _sha256(data) != expected:
            raise CheckpointError(f"checkpoint {path}: {name} is damaged (its sha256 does not match the manifest)")
    return manifest


def read_state(path: str | os.PathLike) -> dict:
    """The verified ``trainer_state.json`` of checkpoint ``path`` (``trainer``, ``recipe``, ...)."""
    verify_checkpoint(path)
    return _read_json(Path(path) / STATE_FILE, "trainer state")


def _load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_safetensors(path.read_bytes())
    except SafetensorError as e:
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is not a safetensors file ({e})") from None


def read_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> dict:
    """Verify a checkpoint folder, load it into ``model`` (and ``optimizer``, ``scheduler``);
    returns the trainer state."""
    path = Path(path)
    state = read_state(path)
    model.load_state_dict(_load_tensors(path / MODEL_FILE))
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state_from(_load_tensors(path / OPTIMIZER_FILE), state["optimizer"]))
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state["trainer"]


def weights_folder(path: str | os.PathLike) -> Path:
    """The checkpoint folder ``path`` names: itself, or for a run folder its ``checkpoints/best``
    (else the newest intact checkpoint)."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    checkpoints = CheckpointDir(root)
    if (checkpoints.best / MANIFEST_FILE).is_file():
        return checkpoints.best
    latest = checkpoints.resume_point() if root.is_dir() else None
    if latest is None:
        raise CheckpointError(f"{path} is neither a checkpoint folder nor a run folder with checkpoints")
    return latest


def load_weights(path: str | os.PathLike, model: nn.Module) -> Path:
    """Load only the model weights of a checkpoint or run folder (:func:`weights_folder`) into
    ``model``, after verifying its manifest; returns the checkpoint folder used."""
    folder = weights_folder(path)
    verify_checkpoint(folder)
    try:
        model.load_state_dict(_load_tensors(folder / MODEL_FILE))
    except RuntimeError as e:  # missing / unexpected keys, shape mismatch
        raise CheckpointError(f"init_from {folder}: the weights do not fit this model: {e}") from None
    return folder


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

    def _pointer_target(self) -> Path | None:
        """The folder ``latest`` names (checked to be a step folder of this run), None without ``latest``."""
        pointer = self.root / "latest"
        if not pointer.exists() and not pointer.is_symlink():
            return None
        if pointer.is_symlink() or not pointer.is_file():
            raise CheckpointError(f"{pointer} is not a regular file")
        try:
            name = pointer.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{pointer} is unreadable ({e})") from None
        if not _STEP_DIR.match(name):  # so no '..', no absolute path, nothing outside the run
            raise CheckpointError(f"{pointer} must name a step folder (step-NNNNNNNN), holds {name[:60]!r}")
        target = self.root / name
        if target.is_symlink():
            raise CheckpointError(f"{pointer} names {name}, a symbolic link")
        return target

    def latest(self) -> Path | None:
        """The verified folder ``latest`` names, or None when there is no checkpoint yet."""
        target = self._pointer_target()
        if target is not None:
            verify_checkpoint(target)
        return target

    def resume_point(self) -> Path | None:
        """The checkpoint to resume from: what ``latest`` names if intact; else (with a warning) the
        newest intact step folder older than it, or any when ``latest`` is unreadable or was never
        written (a kill between a folder's rename and ``latest``); None when there is none at all."""
        try:
            latest = self.latest()
            if latest is not None:
                return latest
            problem, limit = f"{self.root / 'latest'} does not exist", None
        except CheckpointError as e:
            problem, limit = str(e), None
            try:
                named = self._pointer_target()
                limit = int(named.name[5:]) if named is not None else None
            except CheckpointError:
                pass
        for path in reversed(self.steps()):
            if limit is not None and int(path.name[5:]) >= limit:
                continue
            try:
                verify_checkpoint(path)
            except CheckpointError:
                continue
            warnings.warn(f"{problem}; resuming from the newest intact checkpoint, {path.name}", stacklevel=2)
            return path
        if not (self.root / "latest").exists() and not (self.root / "latest").is_symlink():
            return None  # no checkpoint was ever published
        raise CheckpointError(f"{problem}, and no older intact checkpoint is left in {self.root}")

    def has_checkpoints(self) -> bool:
        return (self.root / "latest").exists() or (self.root / "latest").is_symlink() or bool(self.steps())

    def clean(self) -> None:
        """Remove what an interrupted write left behind; put back a ``best/`` that was moved aside."""
        if not self.root.is_dir():
            return
        for leftover in self.root.glob(".*"):
            if leftover.name.startswith(".best.old-") and not self.best.exists():
                os.replace(leftover, self.best)
            elif leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def save(self, step: int, model: nn.Module, optimizer, scheduler, trainer_state: dict, *, best: bool = False,
             recipe: dict | None = None) -> Path:
        """Publish ``step-<step>`` in the order of the module docstring (``best``: it is also the new best)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = write_checkpoint(self.root / f"step-{step:08d}", model, optimizer, scheduler, trainer_state, step,
                                recipe)
        _pause("installed")
        if best:
            self._copy_to_best(path)
            _pause("best")
        atomic_write_text(self.root / "latest", path.name + "\n")
        _pause("latest")
        self._prune(protect={path.name, *([f"step-{trainer_state['best_step']:08d}"]
                                          if trainer_state.get("best_step") is not None else [])})
        return path

    def _copy_to_best(self, source: Path) -> None:
        tmp = self.root / f".best.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        for child in tmp.iterdir():
            fsync_dir(child)  # fsync the copied files (fsync_dir opens any path read-only)
        fsync_dir(tmp)
        _install_dir(tmp, self.best, aside_phase="best-aside")

    def repair_best(self, best_step: int | None) -> str | None:
        """Make ``best/`` the copy of ``step-<best_step>`` the resumed trainer state records; returns
        what was repaired (None when ``best/`` was right)."""
        if best_step is None:
            return None
        try:
            if verify_checkpoint(self.best)["step"] == best_step:
                return None
            problem = f"held step {verify_checkpoint(self.best)['step']}"
        except CheckpointError as e:
            problem = str(e)
        source = self.root / f"step-{best_step:08d}"
        verify_checkpoint(source)
        self._copy_to_best(source)
        return f"rebuilt {self.best} from {source.name} ({problem})"

    def steps(self) -> list[Path]:
        """Step folders, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if (m := _STEP_DIR.match(p.name)) and p.is_dir() and not p.is_symlink()]
        return [p for _, p in sorted(found)]

    def _prune(self, protect: set[str]) -> None:
        for path in self.steps()[:-self.keep]:
            if path.name not in protect:
                shutil.rmtree(path, ignore_errors=True)
