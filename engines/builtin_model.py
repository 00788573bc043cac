"""The built-in model: a tiny Llama-architecture model made locally, offline and deterministically.

It has random weights (its text is gibberish) but every moving part of a real
model: a byte-level BPE tokenizer, special tokens, a chat template and a
safetensors checkpoint that both Transformers and vLLM's CPU backend load
(head_dim 64; vLLM's CPU attention rejects smaller heads). Real deployments
point `--model` at a hub id or a path instead.

The model is built once into `<data_dir>/models/<BUILTIN_MODEL_NAME>` and reused.
Building is atomic (a temporary folder renamed into place), so concurrent
processes never see a half-written model.
"""

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["BUILTIN_MODEL_NAME", "builtin_model_path", "ensure_builtin_model", "model_digest"]

# The name carries a recipe version: change the recipe, bump the suffix.
BUILTIN_MODEL_NAME = "switchyard-tiny-v1"

_SEED = 1234
_VOCAB_SIZE = 2048
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Standard-library modules whose sources train the tokenizer: stable, mixed prose and code.
_CORPUS_MODULES = ["textwrap", "string", "json/decoder", "json/encoder", "argparse", "difflib"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def builtin_model_path(data_dir: Path) -> Path:
    return data_dir / "models" / BUILTIN_MODEL_NAME


def ensure_builtin_model(data_dir: Path) -> Path:
    """The built-in model's folder, building it first if it is not cached yet."""
    target = builtin_model_path(data_dir)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    staging.chmod(0o755)
    try:
        _build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first; its model is identical.
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def model_digest(path: Path) -> str:
    """sha256 over every file's name and bytes, in name order: equal digests, equal models."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _corpus() -> list[str]:
    stdlib = Path(os.__file__).parent
    return [(stdlib / f"{name}.py").read_text(encoding="utf-8") for name in _CORPUS_MODULES]


def _build(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    tokenizer.model_max_length = 2048
    tokenizer.save_pretrained(folder)

    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than Llama's 0.02 so greedy text varies instead of repeating one token.
        initializer_range=0.1,
        dtype="float32",
    )
    torch.manual_seed(_SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)


def main() -> None:
    """`python -m engines.builtin_model [DATA_DIR]`: build (or find) the model and print its path."""
    data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache" / "switchyard"
    print(ensure_builtin_model(data_dir))


if __name__ == "__main__":
    main()
