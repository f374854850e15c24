"""Is a loaded RETRO index slower to query than the one built in the same process? One process builds the
webmix index (saving it to the cache folder argv[1]), times 40,960 random training chunks twice (A), loads the
saved index (B) and times the same chunks twice, then A again. Each timing: an untimed sketch + FAISS search of
all the chunks, then the benchmark's timed_queries (own documents excluded, batches of 8,192)."""
import sys, time, numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from kit.tools.runs import load_script
from kit.core.config import parse_config
retro = load_script("train_gpt2_retro.py")
import importlib.util
spec = importlib.util.spec_from_file_location("br", str(__import__("pathlib").Path(__file__).resolve().parents[2] / "scripts/bench_retrieval.py")); br = importlib.util.module_from_spec(spec); spec.loader.exec_module(br)
cfg, _ = parse_config(retro.Hyperparameters, ["--data", "webmix", "--index-cache", sys.argv[1]])
t = time.perf_counter(); a = retro.build_index(cfg); print("first", a.origin(), round(time.perf_counter() - t, 1), flush=True)
q, _ = br.training_chunks(a, 40960, 0)
def parts(ix, label):
    for rep in range(2):
        t0 = time.perf_counter(); sk = ix.sketch(q); t1 = time.perf_counter(); ix.index.search(sk, 18); t2 = time.perf_counter()
        _, qps = br.timed_queries(ix, q, 10, True)
        print(f"{label} rep{rep}: sketch {t1-t0:.2f}s faiss {t2-t1:.2f}s full {qps:,.0f} q/s", flush=True)
parts(a, "A")
t = time.perf_counter(); b = retro.build_index(cfg); print("second", b.origin(), round(time.perf_counter() - t, 1), flush=True)
parts(b, "B")
parts(a, "A again")
print("invlists", type(a.index.invlists).__name__, type(b.index.invlists).__name__, a.index.nprobe, b.index.nprobe, a.index.nlist, b.index.nlist)
