"""The on-disk format of a saved model, Hugging Face style: a folder with ``config.json`` (the
frozen config dataclass: its class, every field, the registry variant and relformer's version) and
``model.safetensors`` (the ``state_dict``; safetensors only, so loading never runs code). Also
reads a training run's checkpoints (``runs/x/checkpoints/best/``, else the step folder named by
``checkpoints/latest``), verifying the weights' sha256 when the folder has a ``manifest.json``.

Only config classes the caller names (the registry's) are rebuilt: nothing in the file is imported
or evaluated. The one-call API on top is :func:`relformer.models.from_pretrained`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from .. import __version__
from ..utils import atomic_write_bytes, atomic_write_text

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "config_dict", "config_from_dict", "save_config", "read_config",
           "save_weights", "read_weights", "load_weights", "checkpoint_folder", "config_path"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = 1


def config_dict(config: Any, variant: str | None = None) -> dict:
    """The ``config.json`` content of a config dataclass (tuples become JSON lists)."""
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        raise TypeError(f"config must be a config dataclass instance, got {type(config).__name__}")
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for name, value in fields.items():
        try:
            json.dumps(value)
        except TypeError:
            raise TypeError(f"{type(config).__name__}.{name} = {value!r} cannot be stored in JSON") from None
    return {"relformer_version": __version__, "format": FORMAT, "variant": variant,
            "config_class": type(config).__name__, "config": fields}


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the frozen configs hold."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_dict(data: Any, classes: Mapping[str, type], source: str = CONFIG_FILE) -> Any:
    """Rebuild the config of a ``config.json`` whose ``config_class`` is one of ``classes`` (name ->
    class); an unknown class, a field the class lacks or a bad value raise ``ValueError``."""
    if isinstance(data, dict) and "model_type" in data:
        raise ValueError(f"{source} is a Hugging Face config (model_type={data['model_type']!r}): load a BERT / "
                         "sentence-transformers folder with SentenceEncoder.from_pretrained, other HF models "
                         "with relformer.interop.transformers.from_hf")
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{source} is not a relformer config (no 'config' object); was it written by save_pretrained?")
    name = data.get("config_class")
    if name not in classes:
        raise ValueError(f"{source}: unknown config class {name!r}; known: {', '.join(sorted(classes))}")
    cls = classes[name]
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data["config"]:
        if key not in known:
            raise ValueError(f"{source}: {name} has no field {key!r} (written by relformer "
                             f"{data.get('relformer_version')}, this is {__version__})")
    try:
        return cls(**{k: _tuples(v) for k, v in data["config"].items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def save_config(config: Any, folder: str | Path, variant: str | None = None) -> Path:
    """Write ``folder/config.json`` atomically (what makes a weights folder loadable in one call)."""
    path = Path(folder) / CONFIG_FILE
    atomic_write_text(path, json.dumps(config_dict(config, variant), indent=2) + "\n")
    return path


def read_config(path: Path, classes: Mapping[str, type]) -> tuple[Any, str | None]:
    """``(config, variant)`` of a ``config.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read as JSON: {e}") from e
    return config_from_dict(data, classes, str(path)), data.get("variant")


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    """The state dict on the CPU, contiguous, each tied tensor stored once (under its first name)."""
    out, seen = {}, set()
    for name, value in model.state_dict().items():
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape, value.dtype)
        if value.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = value.detach().cpu().contiguous()
    return out


def save_weights(model: nn.Module, folder: str | Path) -> Path:
    """Write ``folder/model.safetensors`` atomically."""
    path = Path(folder) / WEIGHTS_FILE
    atomic_write_bytes(path, save_safetensors(_tensors(model), metadata={"format": "pt"}))
    return path


def _verify(folder: Path, data: bytes) -> None:
    """Check the weights against a training checkpoint's ``manifest.json`` sha256, when there is one."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8")).get("sha256", {}).get(WEIGHTS_FILE)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{manifest} cannot be read: {e}") from e
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{folder / WEIGHTS_FILE} is damaged: its sha256 does not match {manifest}")


def read_weights(folder: Path) -> dict[str, Tensor]:
    """The tensors of ``folder/model.safetensors`` (on the CPU)."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}")
    data = path.read_bytes()
    _verify(folder, data)
    try:
        return load_safetensors(data)
    except SafetensorError as e:
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from e


def load_weights(model: nn.Module, state: Mapping[str, Tensor], source: str = WEIGHTS_FILE) -> nn.Module:
    """``model.load_state_dict(state)`` with strict key and shape checks whose ``ValueError`` names the
    keys; a tied tensor may be stored under one of its names only (as :func:`save_weights` does)."""
    own = model.state_dict()
    stored = _tensors(model)
    missing = sorted(k for k in stored if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise ValueError(f"{source} does not match {type(model).__name__}: missing keys {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    wrong = [f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
             for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{source} does not match {type(model).__name__}: shape mismatch {'; '.join(wrong[:8])}")
    model.load_state_dict(dict(state), strict=False)  # every non-tied key checked above
    return model


def _step_folder(checkpoints: Path) -> Path | None:
    """``best/``, else the folder named by the ``latest`` pointer (a plain name inside ``checkpoints``)."""
    if (checkpoints / "best" / WEIGHTS_FILE).is_file():
        return checkpoints / "best"
    pointer = checkpoints / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"{pointer} names {name!r}, not a folder inside {checkpoints}")
    return checkpoints / name


def checkpoint_folder(path: str | Path) -> Path:
    """The folder holding the weights: ``path`` itself when it has ``model.safetensors``, else a run
    folder's (or a ``checkpoints`` folder's) ``best/``, else the step folder ``latest`` names."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / WEIGHTS_FILE).is_file():
        return path
    for checkpoints in (path / "checkpoints", path):
        found = _step_folder(checkpoints) if checkpoints.is_dir() else None
        if found is not None:
            if not (found / WEIGHTS_FILE).is_file():
                raise FileNotFoundError(f"{found} has no {WEIGHTS_FILE}")
            return found
    raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE}, nor checkpoints/best/ or a checkpoints/latest pointer")


def config_path(folder: Path, root: str | Path) -> Path:
    """``folder/config.json``, else the run folder's: ``root/config.json`` or, for a checkpoint
    ``<run>/checkpoints/<step>`` given directly, ``<run>/config.json``."""
    candidates = [folder, Path(root)]
    if folder.parent.name == "checkpoints":
        candidates.append(folder.parent.parent)
    for candidate in candidates:
        if (candidate / CONFIG_FILE).is_file():
            return candidate / CONFIG_FILE
    raise FileNotFoundError(f"no {CONFIG_FILE} in {' or '.join(map(str, dict.fromkeys(candidates)))}: write one "
                            "with relformer.models.save_config(config, folder)")
