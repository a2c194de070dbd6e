"""Test helper: the HTTP app with in-process embedded backends and its own JobManager, as one
replica would run it, in a process a test may kill (SIGKILL: no cleanup runs).

    python tests/jobs_server.py STORE_DIR SETTINGS_JSON

Prints one JSON line {"url": ..., "pid": ...} once it answers, then serves until killed.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


from serve_app.ingress import build_fastapi_app  # noqa: E402
from tests.support.http_thread import serve_in_thread  # noqa: E402
from serve_app.local import LocalClients  # noqa: E402
from serve_app.service import GenerateService  # noqa: E402
from sam3d_common.settings import load_settings  # noqa: E402
from sam3d_common.store import ArtifactStore  # noqa: E402


def main() -> None:
    store_dir, args = sys.argv[1], json.loads(sys.argv[2])
    settings = load_settings({**args, "store": {"url": store_dir}})
    store = ArtifactStore(store_dir)
    app = build_fastapi_app(GenerateService(settings, LocalClients(settings, store), store))
    url = serve_in_thread(app, tries=400)
    print(json.dumps({"url": url, "pid": os.getpid()}), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
