"""Downloads of token shards from the Hugging Face hub.

huggingface_hub builds the URL and the auth headers (HF_TOKEN, HF_ENDPOINT); the transfer
itself is a plain HTTP range request so that a partial download (`<name>.part`) resumes
across runs. Every file is checked against the shard header before it is moved into place.
"""

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from kit.core.errors import DataError
from kit.data.shards import read_header

FINEWEB_REPO = "kjj0/fineweb10B-gpt2"
FINEWEB_VAL = "fineweb_val_000000.bin"
FINEWEB_SHARD_TOKENS = 100_000_000
CHUNK_BYTES = 1 << 20


def fineweb_train_name(index: int) -> str:
    return f"fineweb_train_{index:06d}.bin"


def fineweb_filenames(num_train_shards: int) -> list[str]:
    """The validation shard and the first N train shards (train shards count from 1)."""
    return [FINEWEB_VAL] + [fineweb_train_name(i) for i in range(1, num_train_shards + 1)]


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def file_url(repo_id: str, filename: str, repo_type: str = "dataset", revision: str = "main") -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=hub_endpoint())


def request_headers() -> dict:
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # sizes and ranges must be of the raw bytes
    return headers


def no_network_message(what: str, reason) -> str:
    return (
        f"cannot download {what} from {hub_endpoint()} ({reason}); on a machine with network run "
        "`python data/cached_fineweb10B.py N` and copy data/fineweb10B/ here, or train on --data webmix"
    )


def download_shard(repo_id: str, filename: str, dest_dir, progress: bool = True) -> Path:
    """Fetch one token shard into dest_dir unless a complete copy is there."""
    return download_file(repo_id, filename, Path(dest_dir) / Path(filename).name, read_header, progress)


def download_file(repo_id: str, remote_name: str, dest: Path, validate, progress: bool = True, timeout: float = 30.0) -> Path:
    """Fetch repo_id/remote_name to dest; skip it when validate(dest) passes, resume a `.part` file.

    validate(path) raises DataError for an incomplete or corrupt file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if passes(validate, dest):
        return dest
    part = dest.with_name(dest.name + ".part")
    if dest.exists():  # present but incomplete: keep its bytes as a partial download
        os.replace(dest, part)
    have = part.stat().st_size if part.exists() else 0
    headers = request_headers()
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(file_url(repo_id, remote_name), headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part file already holds every byte
            return finish_download(part, dest, validate)
        raise DataError(f"download of {remote_name} failed: HTTP {err.code} from {request.full_url}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as err:
        raise DataError(no_network_message(remote_name, getattr(err, "reason", err))) from None
    with response:
        if response.status == 200:
            have = 0  # the server ignored the range: start over
        total = have + int(response.headers.get("Content-Length", 0) or 0)
        bar = tqdm(total=total or None, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=None if progress else True)
        try:
            with open(part, "ab" if have else "wb") as f:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (socket.timeout, ConnectionError, OSError) as err:
            raise DataError(f"download of {remote_name} broke off ({err}); run again to resume from {part}") from None
        finally:
            bar.close()
    return finish_download(part, dest, validate)


def passes(validate, path: Path) -> bool:
    if not path.exists():
        return False
    try:
        validate(path)
        return True
    except DataError:
        return False


def finish_download(part: Path, dest: Path, validate) -> Path:
    """Check the downloaded bytes; move them into place, or delete them."""
    try:
        validate(part)
    except DataError as err:
        part.unlink(missing_ok=True)
        raise DataError(f"downloaded {dest.name} is corrupt and was deleted: {err}") from None
    os.replace(part, dest)
    return dest


def download_fineweb(num_train_shards: int, dest_dir, progress: bool = True) -> list[Path]:
    """The FineWeb-10B validation shard plus the first N train shards, skipping complete files."""
    return [download_shard(FINEWEB_REPO, name, dest_dir, progress) for name in fineweb_filenames(num_train_shards)]
