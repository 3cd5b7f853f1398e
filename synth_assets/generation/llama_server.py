"""Start llama.cpp's OpenAI-compatible server (llama-cpp-python) with a crash workaround.

`python -m synth_assets.generation.llama_server --model FILE --port 8000` takes the same arguments as
`python -m llama_cpp.server`. On CPUs with AMX, llama-cpp-python 0.3.36 repacks Q4_1 weights into an
AMX buffer and then segfaults on any prompt longer than one token; turning the extra buffer types off
(`use_extra_bufts=False`) avoids that at no cost measurable here.
"""

from __future__ import annotations

import runpy


def disable_extra_buffer_types() -> None:
    """Make every `Llama(...)` created from now on load without the CPU repack buffers."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    original = llama_cpp.llama_model_default_params

    def patched() -> object:
        params = original()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_model_default_params = patched
    llama_module.llama_cpp.llama_model_default_params = patched


def main() -> None:
    disable_extra_buffer_types()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
