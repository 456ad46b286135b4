"""`viewfusion data download`: fetch NMR_Dataset.zip (resumable), verify it, record size and sha256.

    viewfusion data download --out data/nmr/NMR_Dataset.zip
    viewfusion data download --out data/nmr/NMR_Dataset.zip --url http://mirror.local/NMR_Dataset.zip

The file streams into `OUT.part`; an interrupted transfer (here or in an earlier run) resumes with
an HTTP Range request from the bytes already there, retried up to `--retries` times. Only a
complete file whose structure passes `viewfusion data verify` is renamed to OUT, and then
`OUT.sha256.json` records its size and sha256 (no checksum is published for the 34 GB zip).

Without network: download the zip by hand (from the URL above, `--url`'s default) and put it at
OUT; running this command again then skips the transfer, verifies the file and records it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from viewfusion.bounded import load_json
from viewfusion.data import nmr
from viewfusion.data.verify import verify_zip
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_write_json, sha256_file

URL = ("https://s3.eu-central-1.amazonaws.com/avg-projects/differentiable_volumetric_rendering/"
       "data/NMR_Dataset.zip")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+)|bytes \*/(\d+)")


def record_path(out: Path) -> Path:
    return out.with_name(out.name + ".sha256.json")


def _manual_hint(url: str, out: Path) -> str:
    return (f"download it by hand from {url} and put it at {out}; then run "
            f"`viewfusion data download --out {out}` again to verify and record it")


class _Interrupted(Exception):
    """A transfer that stopped early; the .part file keeps what arrived."""

    def __init__(self, message: str, *, connected: bool = True):
        super().__init__(message)
        self.connected = connected


def _open(session, url: str, offset: int, timeout: float):
    import requests

    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        return session.get(url, stream=True, timeout=timeout, headers=headers)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Interrupted(f"cannot reach {url} ({type(err).__name__})", connected=False) from None


def _total_and_start(response, offset: int) -> tuple[int | None, int]:
    """(total size or None, byte the body starts at) from a 200 or 206 response."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise ViewFusionError(f"server answered a Range request for byte {offset} with "
                                  f"Content-Range {response.headers.get('Content-Range')!r}")
        return int(match.group(2)), offset
    length = response.headers.get("Content-Length")
    return (int(length) if length else None), 0  # 200: the server ignored Range, start over


def _transfer(session, url: str, part: Path, *, timeout: float, chunk_size: int) -> bool:
    """One attempt: append to `part` from where it ends. True when the file is complete."""
    import requests
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    response = _open(session, url, offset, timeout)
    with response:
        if response.status_code == 416:  # nothing left after `offset`: complete if sizes agree
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match and match.group(3) and int(match.group(3)) == offset:
                return True
            raise ViewFusionError(f"{part} is larger than the file at {url}; delete it and retry")
        if response.status_code not in (200, 206):
            raise ViewFusionError(f"{url}: HTTP {response.status_code} {response.reason}")
        total, start = _total_and_start(response, offset)
        with open(part, "ab" if start else "wb") as fh, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=part.name, disable=None) as bar:
            try:
                for chunk in response.iter_content(chunk_size=chunk_size):
                    fh.write(chunk)
                    bar.update(len(chunk))
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.Timeout) as err:
                raise _Interrupted(f"transfer interrupted at byte {fh.tell()} ({type(err).__name__})") from None
            finally:
                fh.flush()
                os.fsync(fh.fileno())
            size = fh.tell()
    if total is not None and size < total:
        raise _Interrupted(f"transfer stopped at byte {size} of {total}")
    return True


def download(out, *, url: str = URL, retries: int = 5, retry_wait: float = 2.0, timeout: float = 20.0,
             chunk_size: int = 1 << 16, sample: int = 32) -> dict:
    """Make `out` a complete, verified NMR zip with its sha256 record; return the record."""
    import requests

    nmr.check_count(retries, "--retries", minimum=0)
    nmr.check_count(sample, "--sample", minimum=0)
    if not timeout > 0:  # also refuses NaN
        raise ViewFusionError(f"--timeout must be a positive number of seconds, got {timeout}")
    out = Path(out)
    if out.exists():
        return _record(out, url=url, sample=sample)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with requests.Session() as session:
        for attempt in range(retries + 1):
            try:
                _transfer(session, url, part, timeout=timeout, chunk_size=chunk_size)
                break
            except _Interrupted as err:
                have = part.stat().st_size if part.exists() else 0
                if not err.connected and attempt == 0:  # no server at all: offline, fail fast
                    raise ViewFusionError(f"{err}; {_manual_hint(url, out)}") from None
                if attempt == retries:
                    raise ViewFusionError(f"{err}; {have} bytes kept in {part}: run the same command "
                                          "again to resume") from None
                time.sleep(retry_wait * 2**attempt)
    try:
        verify_zip(part, sample=sample)
    except ViewFusionError as err:
        raise ViewFusionError(f"downloaded file failed verification: {err}; delete {part} to "
                              "download again") from None
    os.replace(part, out)
    return _record(out, url=url, sample=sample, verified=True)


def _record(out: Path, *, url: str, sample: int, verified: bool = False) -> dict:
    """Verify (unless just done) and record size + sha256; an up-to-date record is reused."""
    path = record_path(out)
    size = out.stat().st_size
    if path.exists():
        try:
            record = load_json(path)
        except (ValueError, ViewFusionError):
            record = None  # unreadable: verified and written again below
        if isinstance(record, dict) and record.get("bytes") == size:
            return record
    if not verified:
        verify_zip(out, sample=sample)
    record = {"file": out.name, "bytes": size, "sha256": sha256_file(out), "url": url}
    atomic_write_json(path, record)
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/nmr/NMR_Dataset.zip", help="where the zip goes")
    parser.add_argument("--url", default=URL, help="source URL (default: the official one)")
    parser.add_argument("--retries", type=int, default=5, help="resumed attempts after an interruption")
    parser.add_argument("--timeout", type=float, default=20.0, help="connect/read timeout in seconds")
    parser.add_argument("--sample", type=int, default=32, help="objects decoded by the verification")


def run(args: argparse.Namespace) -> int:
    record = download(args.out, url=args.url, retries=args.retries, timeout=args.timeout, sample=args.sample)
    print(json.dumps(record))
    return 0
