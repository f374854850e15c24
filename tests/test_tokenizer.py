"""The GPT-2 tokenizer works offline from the files shipped in kit/data/gpt2_bpe/."""

import subprocess
import sys

from conftest import REPO, subprocess_env


def test_hello_world_offline(tmp_path):
    code = "from kit.data.tokenizer import gpt2_encoding as g, encode_document as d; e = g(); print(e.encode('Hello world'), e.n_vocab, d('Hi')[0])"
    # no network and an empty tiktoken cache: nothing can come from a download
    env = subprocess_env(TIKTOKEN_CACHE_DIR=tmp_path, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[15496, 995] 50257 50256"


def test_round_trip():
    from kit.data.tokenizer import gpt2_encoding

    text = "FineWeb's documents: 3.3821 nats, naïve café — done."
    enc = gpt2_encoding()
    assert enc.decode(enc.encode_ordinary(text)) == text
