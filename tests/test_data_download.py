"""Download (issue 3, item 1) against a real HTTP server on 127.0.0.1 serving a synthetic zip."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from viewfusion.cli import main
from viewfusion.data.download import download, record_path


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.data` with Range support; `server.cuts` lists, per request, how many
    body bytes to send before dropping the connection (None = send everything)."""

    def do_GET(self):
        server, data = self.server, self.server.data
        requested = self.headers.get("Range")
        server.ranges.append(requested)
        start = int(requested.removeprefix("bytes=").split("-")[0]) if requested and not server.ignore_range else 0
        if start >= len(data) and requested:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = server.cuts.pop(0) if server.cuts else None
        self.wfile.write(data[start:] if cut is None else data[start : start + cut])
        self.wfile.flush()
        if cut is not None:  # drop the connection half-way through the body
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(synth_zip):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.data, httpd.cuts, httpd.ranges, httpd.ignore_range = synth_zip.read_bytes(), [], [], False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/NMR_Dataset.zip"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _check_complete(out, data):
    assert out.read_bytes() == data and not out.with_name(out.name + ".part").exists()
    record = json.loads(record_path(out).read_text())
    assert record["bytes"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()


def test_full_download_verifies_and_records(server, tmp_path):
    out = tmp_path / "nmr" / "NMR_Dataset.zip"
    download(out, url=server.url, chunk_size=4096)
    _check_complete(out, server.data)
    assert server.ranges == [None]
    download(out, url="http://127.0.0.1:1/unused")  # already there: no network needed
    assert len(server.ranges) == 1


def test_cut_connection_then_resume_with_range(server, tmp_path, capsys):
    out = tmp_path / "NMR_Dataset.zip"
    half = len(server.data) // 2
    server.cuts = [half]
    args = ["data", "download", "--out", str(out), "--url", server.url, "--retries", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err
    part = out.with_name(out.name + ".part")
    kept = part.stat().st_size
    assert not out.exists() and 0 < kept <= half
    assert main(args) == 0
    assert server.ranges == [None, f"bytes={kept}-"]
    _check_complete(out, server.data)


def test_retries_resume_within_one_run(server, tmp_path):
    out = tmp_path / "NMR_Dataset.zip"
    server.cuts = [100_000, 200_000]
    download(out, url=server.url, retries=3, retry_wait=0.0, chunk_size=4096)
    _check_complete(out, server.data)
    assert server.ranges[0] is None and all(r.startswith("bytes=") for r in server.ranges[1:])
    assert len(server.ranges) == 3


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    out = tmp_path / "NMR_Dataset.zip"
    server.cuts, server.ignore_range = [50_000], True
    download(out, url=server.url, retries=1, retry_wait=0.0)
    _check_complete(out, server.data)


def test_no_network_fails_fast_with_manual_instructions(tmp_path, capsys):
    out = tmp_path / "NMR_Dataset.zip"
    start = time.monotonic()
    assert main(["data", "download", "--out", str(out), "--url", "http://127.0.0.1:1/NMR_Dataset.zip"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert "cannot reach" in err and f"put it at {out}" in err
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


def test_manually_placed_file_is_verified_and_recorded(synth_zip, tmp_path):
    out = tmp_path / "NMR_Dataset.zip"
    out.write_bytes(synth_zip.read_bytes())
    download(out, url="http://127.0.0.1:1/offline")
    _check_complete(out, synth_zip.read_bytes())


def test_download_that_is_not_an_nmr_zip_is_not_renamed(server, tmp_path, capsys):
    server.data = b"<html>not found</html>" * 100
    out = tmp_path / "NMR_Dataset.zip"
    assert main(["data", "download", "--out", str(out), "--url", server.url]) == 2
    assert "failed verification" in capsys.readouterr().err
    assert not out.exists() and not record_path(out).exists()
