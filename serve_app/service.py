"""What the app's routes and its Python API share: the settings, the stage clients, the
artifact store with its retention sweep, and whether the text route can run.

The request's steps live in their own modules: serve_app.request_parsing (parse),
serve_app.prepare (prepare), serve_app.run (run), serve_app.wire (encode and pace),
serve_app.stream_response (respond).
"""
from __future__ import annotations

from serve_app.pipeline import StageClients
from sam3d_common.settings import AppSettings
from sam3d_common.store import ArtifactStore, Retention


class GenerateService:
    def __init__(self, settings: AppSettings, clients: StageClients, store: ArtifactStore):
        self.settings = settings
        self.clients = clients
        self.store = store
        keep = settings.store
        self.retention = Retention(store, keep.ttl_s, keep.max_total_bytes, keep.sweep_every_s)
        self._generator_available: bool | None = None

    async def text_route_available(self) -> bool:
        """Whether the deployment has an image generator (asked once, then remembered)."""
        if self._generator_available is None:
            info = await self.clients.describe_image_generator()
            self._generator_available = bool(info.get("available"))
        return self._generator_available

