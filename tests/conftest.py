"""Shared fixtures: random Hugging Face GPT-2 checkpoints (no real weights exist offline) and tokenizer checks."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_hf_gpt2(path, n_layer=2, n_head=4, n_embd=64, n_positions=128, seed=0):
    """Save a random GPT2LMHeadModel (vocab 50257) to `path`; LayerNorm weights and all biases are moved
    off their defaults so that a loader that skipped any of them would be caught."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=50257)
    model = move_off_defaults(GPT2LMHeadModel(config).eval())
    model.save_pretrained(path)
    return model


def move_off_defaults(model):
    """Shift every LayerNorm weight and every bias by noise (GPT-2 names in ours and Hugging Face's), so that
    a loader, copier or exporter that skips any of them is caught."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_gpt2_dir(tmp_path_factory):
    """One small random GPT-2 directory shared by the tests that only need 'some' GPT-2."""
    path = str(tmp_path_factory.mktemp("hf_gpt2"))
    make_hf_gpt2(path)
    return path


def gpt2_tokenizer_or_skip():
    """tiktoken's GPT-2 encoding, or skip with the reason when neither the network nor the cache has it."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        pytest.skip(f"GPT-2 BPE files unavailable (no network and TIKTOKEN_CACHE_DIR unset; "
                    f"see ../shared/README.md): {type(e).__name__}")


def hf_tokenizer_or_skip():
    """transformers' GPT-2 tokenizer, or skip when neither the network nor HF_HUB_CACHE has its files."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained("gpt2")
    except Exception as e:
        pytest.skip(f"gpt2's tokenizer files unavailable (no network and HF_HUB_CACHE unset; see "
                    f"../shared/README.md): {type(e).__name__}")
