"""Export a baseline-architecture run to the Hugging Face GPT-2 format.

    python scripts/export_hf.py logs/my_run --out exports/my_run
    python -c "from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('exports/my_run')"

Writes model.safetensors with transformers' GPT-2 tensor names (its Conv1D layers store weights
transposed), a config.json for GPT2LMHeadModel, and the GPT-2 tokenizer's files (vocab.json,
merges.txt, tokenizer_config.json), so AutoTokenizer.from_pretrained loads the export too. Only kit.modeling.model.GPT with its standard blocks
(train_gpt2.py and the variants that keep its architecture) has a GPT-2 equivalent; every other
model stays in the kit's own format: its run directory's model.safetensors (the module's
state_dict names) with config.json (the train script's flags) and summary.json (which script),
which kit.tools.runs.load_model and scripts/generate.py read.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kit.core.errors import UserError, run_cli  # noqa: E402
from kit.tools.inference import attention_kind  # noqa: E402
from kit.modeling.model import GPT, MLP, Block  # noqa: E402
from kit.tools.runs import load_model  # noqa: E402

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # Conv1D: (in, out)


def is_gpt2(model) -> bool:
    if not isinstance(model, GPT) or type(model.wte) is not torch.nn.Embedding or model.lm_head.weight is not model.wte.weight:
        return False
    return all(type(block) is Block and attention_kind(block.attn) == "mha" and type(block.mlp) is MLP for block in model.h)


def hf_state_dict(model) -> dict:
    """transformers' GPT-2 names; the output head is tied to wte, so it is stored once."""
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        tensor = tensor.t() if name.endswith(TRANSPOSED) else tensor
        tensors[f"transformer.{name}"] = tensor.detach().contiguous().cpu()
    return tensors


def hf_config(config) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
        "activation_function": "gelu_new",  # the tanh approximation kit.modeling.model.MLP uses
        "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256,
    }


def export(model, out: Path) -> Path:
    from safetensors.torch import save_file

    if not is_gpt2(model):
        raise UserError("only the baseline's GPT-2 architecture (standard blocks, multi-head attention, tied embeddings) has a "
                        "Hugging Face equivalent; this run's model stays in the kit format (its run directory: "
                        "model.safetensors, config.json, summary.json)")
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model.config), indent=1) + "\n")
    write_tokenizer(out, model.config.block_size)
    return out


def write_tokenizer(out: Path, max_length: int) -> None:
    """The GPT-2 tokenizer in transformers' layout (AutoTokenizer.from_pretrained(out) loads it): OpenAI's
    BPE files shipped in kit/data/gpt2_bpe under the names GPT2Tokenizer reads, and its config."""
    import shutil

    from kit.data.tokenizer import BPE_DIR

    shutil.copyfile(BPE_DIR / "encoder.json", out / "vocab.json")
    shutil.copyfile(BPE_DIR / "vocab.bpe", out / "merges.txt")
    special = "<|endoftext|>"
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length, "bos_token": special, "eos_token": special,
              "unk_token": special, "add_prefix_space": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": special, "eos_token": special, "unk_token": special}, indent=1) + "\n")


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    model, _, _ = load_model(args.run_dir, "cpu")
    return f"wrote {export(model, Path(args.out))} (GPT2LMHeadModel)"


if __name__ == "__main__":
    sys.exit(run_cli(main))
