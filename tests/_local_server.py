"""Test helpers for downloads: a real HTTP server on 127.0.0.1, and a sandbox with no data on the search path,
an empty cache and a registry the test may point at that server (restored afterwards)."""
import functools
import http.server
import threading
from pathlib import Path

import pytest

from vibenanochat import assets


class Server:
    "A real HTTP server on 127.0.0.1 serving a folder, for the length of a `with` block."
    def __init__(self, folder: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self
    def __exit__(self, *a):
        self.httpd.shutdown(); self.httpd.server_close()


def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    "An empty search path and cache, the cwd in tmp_path, and a registry copy the test may add entries to."
    monkeypatch.setenv("VNC_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("VNC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(assets, "REGISTRY", dict(assets.REGISTRY))
    return tmp_path
