"""Artifact store: a local folder by default, any fsspec URL in production.

Artifacts live at <root>/<artifact_id>/<name>. Both parts are checked against strict
patterns before any path is built, so no request value reaches the filesystem unchecked.
Local writes go to a temporary name and are renamed into place (atomic on POSIX); object
stores make a single put visible atomically by themselves.
"""
from __future__ import annotations

import re
import uuid

import fsspec

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}\.(glb|ply|png|json|bin)$")

CONTENT_TYPES = {
    "glb": "model/gltf-binary",
    "ply": "application/octet-stream",
    "png": "image/png",
    "json": "application/json",
    "bin": "application/octet-stream",
}


class ArtifactNotFound(KeyError):
    pass


class InvalidArtifactRef(ValueError):
    pass


def new_artifact_id() -> str:
    return uuid.uuid4().hex


def check_ref(artifact_id: str, name: str) -> None:
    if not ID_PATTERN.fullmatch(artifact_id or ""):
        raise InvalidArtifactRef("artifact id must be 32 lowercase hex characters")
    if not NAME_PATTERN.fullmatch(name or ""):
        raise InvalidArtifactRef("artifact name must be like model.glb, splat.ply or mask.png")


def content_type(name: str) -> str:
    return CONTENT_TYPES[name.rsplit(".", 1)[-1]]


class ArtifactStore:
    def __init__(self, url: str):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, artifact_id: str, name: str) -> str:
        check_ref(artifact_id, name)
        return f"{self.root}/{artifact_id}/{name}"

    def put(self, artifact_id: str, name: str, data: bytes) -> int:
        path = self._path(artifact_id, name)
        folder = f"{self.root}/{artifact_id}"
        if self.local:
            self.fs.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        return len(data)

    def get(self, artifact_id: str, name: str) -> bytes:
        path = self._path(artifact_id, name)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise ArtifactNotFound(f"{artifact_id}/{name}") from None

    def exists(self, artifact_id: str, name: str) -> bool:
        return self.fs.exists(self._path(artifact_id, name))
