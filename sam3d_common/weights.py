"""Where a backend's weights are: a configured local folder, or the Hugging Face hub cache.

Used by the image generator (diffusers), the SAM 3 segmenter and the SAM 3D reconstructor, so
each says the same thing when weights are missing: the setting, the path, what is wrong there.
"""
from __future__ import annotations

from pathlib import Path

from sam3d_common.errors import ModelUnavailable


def hub_cache_repo(model_id: str) -> Path:
    """The hub cache folder of a repository (`models--org--name`), whether or not it exists."""
    try:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - huggingface_hub is optional here
        cache = Path.home() / ".cache" / "huggingface" / "hub"
    return cache / f"models--{model_id.replace('/', '--')}"


def hub_snapshot(model_id: str) -> Path:
    """The cached snapshot of a repository (refs/main, else the newest), or where it would be
    (`snapshots/<revision>`)."""
    repo = hub_cache_repo(model_id)
    ref = repo / "refs" / "main"
    if ref.is_file():
        return repo / "snapshots" / ref.read_text().strip()
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    if snapshots:
        return snapshots[-1]
    return repo / "snapshots" / "<revision>"


def local_weights(local_dir: str, marker: str, setting: str, what: str, hint: str) -> Path:
    """`local_dir` as a Path when it holds the file `marker`; else ModelUnavailable naming `what`
    is missing, the `setting`, the path and what is wrong there, followed by `hint`."""
    path = Path(local_dir).expanduser()
    if not (path / marker).is_file():
        problem = "does not exist" if not path.exists() else f"has no {marker}"
        raise ModelUnavailable(f"{what} not found: {setting} {str(path)!r} {problem}; {hint}")
    return path
