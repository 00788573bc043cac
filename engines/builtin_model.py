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

import argparse
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUILTIN_MODEL_NAME",
    "RECIPES",
    "Recipe",
    "builtin_model_path",
    "ensure_builtin_model",
    "model_digest",
]


@dataclass(frozen=True)
class Recipe:
    """A model size. The name carries a recipe version: change a recipe, bump its suffix."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


TINY = Recipe("switchyard-tiny-v1", 128, 256, 2, 2, 1)  # 0.56 M parameters: the default everywhere
SMALL = Recipe("switchyard-small-v1", 512, 1536, 8, 8, 2)  # 23 M parameters: for engine benchmarks
RECIPES = {recipe.name: recipe for recipe in (TINY, SMALL)}
BUILTIN_MODEL_NAME = TINY.name

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


def builtin_model_path(data_dir: Path, recipe: Recipe = TINY) -> Path:
    return data_dir / "models" / recipe.name


def ensure_builtin_model(data_dir: Path, recipe: Recipe = TINY) -> Path:
    """The built-in model's folder, building it first if it is not cached yet."""
    target = builtin_model_path(data_dir, recipe)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    staging.chmod(0o755)
    try:
        _build(staging, recipe)
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


def _build(folder: Path, recipe: Recipe) -> None:
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
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
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
    """`python -m engines.builtin_model [DATA_DIR] [--recipe NAME]`: build (or find) a model, print its path."""
    parser = argparse.ArgumentParser(prog="python -m engines.builtin_model", description=main.__doc__)
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path.home() / ".cache" / "switchyard")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=TINY.name)
    args = parser.parse_args()
    print(ensure_builtin_model(args.data_dir, RECIPES[args.recipe]))


if __name__ == "__main__":
    main()
