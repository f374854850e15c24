"""Downloads against a local HTTP server standing in for the Hugging Face hub, and data staging."""

import hashlib
import json
import lzma
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_module, make_documents, make_shard, subprocess_env
from kit.data import hub
from kit.core.errors import DataError
from kit.data.shards import EOT, HEADER_BYTES, open_shard, shard_is_complete, write_shard
from kit.data.tokenizer import gpt2_encoding


def load_script(name):
    return load_module(f"data/{name}.py", name)


def serve_fineweb(fake_hub, tmp_path, num_train=2, tokens=5000):
    """Put fake FineWeb shards on the fake hub; return their bytes by name."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    served = {}
    for i, name in enumerate(hub.fineweb_filenames(num_train)):
        make_shard(tmp_path / name, tokens, seed=i)
        served[name] = (tmp_path / name).read_bytes()
        fake_hub.files[f"{hub.FINEWEB_REPO}/{name}"] = served[name]
    return served


def test_full_download_then_skip(fake_hub, tmp_path):
    served = serve_fineweb(fake_hub, tmp_path / "src")
    dest = tmp_path / "dest"
    paths = hub.download_fineweb(2, dest, progress=False)
    assert [p.name for p in paths] == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert all(p.read_bytes() == served[p.name] for p in paths)
    before = len(fake_hub.requests)
    hub.download_fineweb(2, dest, progress=False)
    assert len(fake_hub.requests) == before  # complete files: no request at all


def test_partial_download_resumes_with_a_range_request(fake_hub, tmp_path):
    served = serve_fineweb(fake_hub, tmp_path / "src", num_train=1)
    dest = tmp_path / "dest"
    dest.mkdir()
    name = "fineweb_train_000001.bin"
    cut = HEADER_BYTES + 1234
    (dest / (name + ".part")).write_bytes(served[name][:cut])
    hub.download_shard(hub.FINEWEB_REPO, name, dest, progress=False)
    assert (dest / name).read_bytes() == served[name]
    assert fake_hub.requests_for(f"{hub.FINEWEB_REPO}/{name}") == [(f"{hub.FINEWEB_REPO}/{name}", f"bytes={cut}-")]
    assert not (dest / (name + ".part")).exists()


def test_truncated_file_in_place_is_completed(fake_hub, tmp_path):
    served = serve_fineweb(fake_hub, tmp_path / "src", num_train=1)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / hub.FINEWEB_VAL).write_bytes(served[hub.FINEWEB_VAL][:5000])
    hub.download_shard(hub.FINEWEB_REPO, hub.FINEWEB_VAL, dest, progress=False)
    assert (dest / hub.FINEWEB_VAL).read_bytes() == served[hub.FINEWEB_VAL]


def test_corrupt_download_is_rejected_and_deleted(fake_hub, tmp_path):
    serve_fineweb(fake_hub, tmp_path / "src", num_train=1)
    key = f"{hub.FINEWEB_REPO}/{hub.FINEWEB_VAL}"
    fake_hub.files[key] = b"\x00" * 4096  # wrong magic
    with pytest.raises(DataError, match="corrupt and was deleted"):
        hub.download_shard(hub.FINEWEB_REPO, hub.FINEWEB_VAL, tmp_path / "dest", progress=False)
    assert not any((tmp_path / "dest").iterdir())


def test_missing_file_on_the_hub(fake_hub, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        hub.download_shard(hub.FINEWEB_REPO, "fineweb_train_000099.bin", tmp_path, progress=False)


def test_no_network_says_what_to_do(dead_endpoint, tmp_path):
    with pytest.raises(DataError) as err:
        hub.download_shard(hub.FINEWEB_REPO, hub.FINEWEB_VAL, tmp_path, progress=False)
    message = str(err.value)
    assert "cannot download" in message and "--data webmix" in message and "\n" not in message


def test_cached_fineweb_script(fake_hub, tmp_path):
    served = serve_fineweb(fake_hub, tmp_path / "src", num_train=2)
    result = subprocess.run([sys.executable, "data/cached_fineweb10B.py", "2", "--dest", str(tmp_path / "out")],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(served)


def write_parquet(path, texts):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts, "id": [str(i) for i in range(len(texts))]}), path)


def test_fineweb_tokenizer_writes_val_then_train_shards(tmp_path):
    fineweb = load_script("fineweb")
    texts = [f"Document number {i}. " + "The quick brown fox jumps over the lazy dog. " * (i % 7 + 1) for i in range(60)]
    (tmp_path / "raw").mkdir()
    write_parquet(tmp_path / "raw" / "000_00000.parquet", texts[:30])
    write_parquet(tmp_path / "raw" / "001_00000.parquet", texts[30:])
    out = tmp_path / "tok"
    code = fineweb.main(["--parquet-dir", str(tmp_path / "raw"), "--out-dir", str(out), "--val-tokens", "500", "--shard-tokens", "700", "--workers", "2"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "fineweb_train_000001.bin" and "fineweb_val_000000.bin" in names
    stream = np.concatenate([open_shard(out / n) for n in ["fineweb_val_000000.bin"] + sorted(n for n in names if "train" in n)])
    assert len(open_shard(out / "fineweb_val_000000.bin")) == 500
    assert all(len(open_shard(out / n)) == 700 for n in sorted(n for n in names if "train" in n)[:-1])
    docs = gpt2_encoding().decode(stream.tolist()).split("<|endoftext|>")[1:]
    assert docs == texts
    assert stream[0] == EOT


def test_fineweb_raw_download_checks_parquet(fake_hub, tmp_path):
    fineweb = load_script("fineweb")
    write_parquet(tmp_path / "good.parquet", ["a text"])
    fake_hub.files[f"{fineweb.RAW_REPO}/{fineweb.sample_10bt_name(0)}"] = (tmp_path / "good.parquet").read_bytes()
    fake_hub.files[f"{fineweb.RAW_REPO}/{fineweb.sample_10bt_name(1)}"] = b"PAR1 not really parquet"
    assert fineweb.download_sample(1, tmp_path / "raw")[0].read_bytes() == (tmp_path / "good.parquet").read_bytes()
    with pytest.raises(DataError, match="corrupt"):
        fineweb.download_sample(2, tmp_path / "raw")


def make_webmix_source(folder):
    """A small webmix-like source folder: xz files plus a MANIFEST.json with their sha256."""
    folder.mkdir()
    manifest = {"files": {}}
    for i, name in enumerate(["webmix_train_000001.bin", "webmix_val_000000.bin"]):
        write_shard(folder / name, make_documents(3000, seed=i))
        raw = (folder / name).read_bytes()
        (folder / (name + ".xz")).write_bytes(lzma.compress(raw))
        (folder / name).unlink()
        manifest["files"][name] = {"tokens": 3000, "sha256": hashlib.sha256(raw).hexdigest()}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    return manifest


def test_webmix_staging_verifies_checksums(tmp_path):
    webmix = load_script("webmix")
    manifest = make_webmix_source(tmp_path / "src")
    assert webmix.main(["--source", str(tmp_path / "src"), "--dest", str(tmp_path / "dest")]) == 0
    for name, info in manifest["files"].items():
        assert shard_is_complete(tmp_path / "dest" / name)
        assert hashlib.sha256((tmp_path / "dest" / name).read_bytes()).hexdigest() == info["sha256"]
    manifest["files"]["webmix_val_000000.bin"]["sha256"] = "0" * 64
    (tmp_path / "src" / "MANIFEST.json").write_text(json.dumps(manifest))
    (tmp_path / "dest" / "webmix_val_000000.bin").unlink()
    assert webmix.main(["--source", str(tmp_path / "src"), "--dest", str(tmp_path / "dest")]) == 1
    assert not (tmp_path / "dest" / "webmix_val_000000.bin").exists()


def test_webmix_staging_in_parts(tmp_path):
    webmix = load_script("webmix")
    make_webmix_source(tmp_path / "src")
    (tmp_path / "src" / "webmix_val_000000.bin.xz").unlink()  # this part has not arrived yet
    assert webmix.main(["--source", str(tmp_path / "src"), "--dest", str(tmp_path / "dest")]) == 1
    assert webmix.main(["--source", str(tmp_path / "src"), "--dest", str(tmp_path / "dest"), "--skip-missing"]) == 0
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["webmix_train_000001.bin"]


def test_an_evaluation_fetches_the_fineweb_validation_shard_alone(fake_hub, tmp_path, monkeypatch):
    """0 steps (scripts/evaluate.py on a FineWeb run): the validation shard comes from the hub, no training shard."""
    from types import SimpleNamespace

    from kit.data import datasets

    monkeypatch.setenv("KIT_DATA_DIR", str(tmp_path / "data"))  # its own folder: other tests count what they fetch into the shared one
    served = serve_fineweb(fake_hub, tmp_path / "src", num_train=2)
    data = datasets.resolve(SimpleNamespace(train_files="", data="fineweb", max_steps=0, batch_tokens=524_288))
    assert data.train == [] and data.val.read_bytes() == served["fineweb_val_000000.bin"]
    assert not any("train" in (path or "") for path, _ in fake_hub.requests)  # (unmatched paths, such as metadata requests, are None)
