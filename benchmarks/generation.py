"""Generation throughput: the guide's naive loop vs llama.cpp vs our local engine, in one process.

Same 32 review prompts, 64 new tokens each, same model (SmolLM2-135M-Instruct). Only real tokens
count (up to and including end of sequence), never padding. Ends with one line:

RESULT engine_tok_s=<x> naive_tok_s=<y> llamacpp_tok_s=<z> speedup_vs_naive=<x/y> speedup_vs_llamacpp=<x/z>

Run: .venv/bin/python benchmarks/generation.py [--prompts 32] [--new-tokens 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PRODUCTS = [
    "blender", "pair of headphones", "laptop", "desk chair", "coffee maker", "tent", "phone case",
    "vacuum cleaner",
]  # fmt: skip
SENTIMENTS = ["positive", "negative", "neutral", "positive"]


def review_prompts(count: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": "You write short, realistic product reviews."},
            {
                "role": "user",
                "content": f"Write one {SENTIMENTS[i % 4]} review of a {PRODUCTS[i % len(PRODUCTS)]} "
                f"in two sentences. Reply with the review text only.",
            },
        ]
        for i in range(count)
    ]


def naive_loop(model_dir: str, prompts: list[list[dict[str, str]]], new_tokens: int, threads: int) -> float:
    """The guide's loop: one prompt at a time, `model.generate` with sampling, per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stop = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    torch.manual_seed(0)
    tokens = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for messages in prompts:
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            out = model.generate(
                **ids,
                max_new_tokens=new_tokens,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                pad_token_id=tokenizer.eos_token_id,
            )
            completion = out[0, ids["input_ids"].shape[1] :].tolist()
            end = next((i for i, t in enumerate(completion) if t in stop), None)
            tokens += len(completion) if end is None else end + 1
    seconds = time.perf_counter() - started
    print(f"naive loop: {tokens} tokens in {seconds:.1f}s = {tokens / seconds:.1f} tok/s", flush=True)
    return tokens / seconds


def llama_cpp(gguf: str, prompts: list[list[dict[str, str]]], new_tokens: int, threads: int) -> float | None:
    """llama.cpp (llama-cpp-python) on the same GGUF file, one request at a time."""
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp: llama-cpp-python not installed, skipped", flush=True)
        return None
    from llama_cpp import Llama

    from synth_assets.generation.llama_server import disable_extra_buffer_types

    disable_extra_buffer_types()  # llama-cpp-python 0.3.36 segfaults on AMX CPUs otherwise
    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, n_batch=512, verbose=False, seed=0)
    tokens = 0
    started = time.perf_counter()
    for messages in prompts:
        response = llm.create_chat_completion(
            messages=messages, max_tokens=new_tokens, temperature=0.8, top_p=0.95
        )
        tokens += int(response["usage"]["completion_tokens"])
    seconds = time.perf_counter() - started
    print(f"llama.cpp: {tokens} tokens in {seconds:.1f}s = {tokens / seconds:.1f} tok/s", flush=True)
    return tokens / seconds


def engine(prompts: list[list[dict[str, str]]], new_tokens: int, batch_size: int, dtype: str) -> float:
    """Our local engine as a spec runs it: length-bucketed batches, per-request seeded top-k/top-p
    sampling, and the spec's default dtype ('auto': bfloat16 on CPUs with native bf16)."""
    from synth_assets.generation.local_llm import ChatRequest, get_local_model, resolve_dtype

    model = get_local_model(dtype=dtype)
    print(f"engine dtype: {resolve_dtype(dtype)}", flush=True)
    requests = [ChatRequest(key=str(i), messages=m, seed=i) for i, m in enumerate(prompts)]
    model.generate(requests[:2], max_new_tokens=4, temperature=0.8, top_p=0.95,
                   repetition_penalty=1.1, batch_size=2)  # fmt: skip
    started = time.perf_counter()
    results = model.generate(
        requests, max_new_tokens=new_tokens, temperature=0.8, top_p=0.95, repetition_penalty=1.1,
        batch_size=batch_size,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    print(f"engine: {tokens} tokens in {seconds:.1f}s = {tokens / seconds:.1f} tok/s", flush=True)
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()

    from synth_assets.generation.local_llm import find_gguf_file, get_local_model

    prompts = review_prompts(args.prompts)
    model_dir = str(get_local_model().model_dir)  # also makes sure the weight cache exists
    engine_tok_s = engine(prompts, args.new_tokens, args.batch_size, args.dtype)
    naive_tok_s = naive_loop(model_dir, prompts, args.new_tokens, args.threads)
    llamacpp_tok_s = llama_cpp(str(find_gguf_file()), prompts, args.new_tokens, args.threads)
    llama_text = f"{llamacpp_tok_s:.1f}" if llamacpp_tok_s else "nan"
    vs_llama = f"{engine_tok_s / llamacpp_tok_s:.2f}" if llamacpp_tok_s else "nan"
    print(
        f"RESULT engine_tok_s={engine_tok_s:.1f} naive_tok_s={naive_tok_s:.1f} "
        f"llamacpp_tok_s={llama_text} speedup_vs_naive={engine_tok_s / naive_tok_s:.2f} "
        f"speedup_vs_llamacpp={vs_llama}"
    )


if __name__ == "__main__":
    main()
