"""A fresh process loads the cached webmix index (folder argv[1], saved by same_process.py) and times the first 3,840
and then all 40,960 of the same random training chunks twice each (own documents excluded)."""
import sys, time, numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from kit.tools.runs import load_script
from kit.core.config import parse_config
retro = load_script("train_gpt2_retro.py")
import importlib.util
spec = importlib.util.spec_from_file_location("br", str(__import__("pathlib").Path(__file__).resolve().parents[2] / "scripts/bench_retrieval.py")); br = importlib.util.module_from_spec(spec); spec.loader.exec_module(br)
cfg, _ = parse_config(retro.Hyperparameters, ["--data", "webmix", "--index-cache", sys.argv[1]])
b = retro.build_index(cfg)
q, _ = br.training_chunks(b, 40960, 0)
for n in (3840, 40960):
    for rep in range(2):
        _, qps = br.timed_queries(b, q[:n], 10, True)
        print(f"loaded, fresh process, {n} queries rep{rep}: {qps:,.0f} q/s", flush=True)
