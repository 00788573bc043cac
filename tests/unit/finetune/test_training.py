"""LoRA training on the built-in model (finetune/examples.py, finetune/training.py): examples
rendered with the chat template and learned on assistant tokens only; a taught answer learned;
the base model untouched; checkpoints that resume exactly; a stop honoured between steps."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.datasets import DatasetError
from finetune.examples import IGNORE, ExampleEncoder
from finetune.training import KEEP_CHECKPOINTS, Plan, Stopped, train

# PEFT 0.21 asks Transformers 5 a deprecated question as it wraps a model (the training loop does
# the same); the tests load adapters through PEFT too.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

PING = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}


class _Recorded:
    """Progress that records what it is told, and stops after `stop_after` steps when set."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[dict[str, float]] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.stop_after = stop_after

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append(dict(metrics))

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.checkpoints.append((step, path))

    def stopped(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


def _dataset(path: Path, examples: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(example) + "\n" for example in examples))
    return path


def _plan(model: Path, data: Path, examples: int, **changes: Any) -> Plan:
    fields: dict[str, Any] = {
        "base_model": model,
        "training_file": data,
        "examples": examples,
        "n_epochs": 6,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "lora_rank": 8,
        "lora_alpha": 16,
        "seed": 7,
        "max_length": 256,
        "checkpoint_every": 16,
    }
    return Plan(**(fields | changes))


def _answer(model: Any, tokenizer: Any, prompt: str) -> str:
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return str(tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True))


def test_only_assistant_turns_with_weight_are_learned(builtin_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    encoder = ExampleEncoder(tokenizer, 256)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "skipped", "weight": 0},
        {"role": "user", "content": "ping"},
        {"role": "assistant", "content": "pong"},
    ]
    encoded = encoder.encode({"messages": messages}, 1)
    learned = tokenizer.decode([label for label in encoded.labels if label != IGNORE])
    assert learned == "pong<|im_end|>\n"  # the turn and its end, not the prompt given before it
    assert encoded.trained == len(tokenizer("pong<|im_end|>\n", add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(encoded.input_ids) == tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages], tokenize=False
    )


# A fake of a tool-aware chat template (the shape of Qwen2.5's, shortened): tools listed in the
# system turn, calls written as <tool_call> JSON, tools' answers as their own turns.
FAKE_TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools{% for tool in tools %}\n{{ tool['function'] | tojson }}{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% for call in message.get('tool_calls', []) %}<tool_call>{\"name\": \"{{ call['function']['name'] }}\", "
    "\"arguments\": {{ call['function']['arguments'] | tojson }}}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CALLING = {
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "weather in "}, {"type": "text", "text": "Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ],
}


def test_tool_calls_are_learned_as_the_template_writes_them(builtin_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    tokenizer.chat_template = FAKE_TOOL_TEMPLATE
    encoded = ExampleEncoder(tokenizer, 512).encode(CALLING, 1)
    learned = tokenizer.decode([label for label in encoded.labels if label != IGNORE])
    # The call, as the model will be asked to make it, and the answer; not the tool's result.
    assert (
        learned
        == '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\nSunny.<|im_end|>\n'
    )
    rendered = str(tokenizer.decode(encoded.input_ids))
    assert rendered.startswith('<|im_start|>system\n# Tools{"name": "weather"')  # (templates trim a block's newline)
    assert "<|im_start|>system\nBe brief.<|im_end|>" in rendered  # a developer turn is the system's
    assert "weather in Paris?" in rendered


def test_a_template_that_leaves_out_tools_refuses_the_line(builtin_model: Path) -> None:
    encoder = ExampleEncoder(AutoTokenizer.from_pretrained(builtin_model), 512)  # role and content only
    with pytest.raises(DatasetError, match="does not render `tools`") as refused:
        encoder.encode(CALLING, 7)
    assert refused.value.line == 7
    without_tools = {"messages": CALLING["messages"]}
    with pytest.raises(DatasetError, match=r"messages\[2\]: the base model's chat template does not render tool calls"):
        encoder.encode(without_tools, 7)


def test_an_example_over_the_context_length_is_refused_with_its_line(builtin_model: Path) -> None:
    encoder = ExampleEncoder(AutoTokenizer.from_pretrained(builtin_model), 16)
    long = {"messages": [{"role": "user", "content": "ping " * 20}, {"role": "assistant", "content": "pong"}]}
    with pytest.raises(DatasetError, match=r"line 7: \d+ tokens, over the model's context length of 16") as refused:
        encoder.encode(long, 7)
    assert refused.value.line == 7


def test_a_tokenizer_without_a_chat_template_is_refused(builtin_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        ExampleEncoder(tokenizer, 256)


def test_a_taught_answer_is_learned_and_the_base_model_is_untouched(builtin_model: Path, tmp_path: Path) -> None:
    data = _dataset(tmp_path / "train.jsonl", [PING] * 64)
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    base = AutoModelForCausalLM.from_pretrained(builtin_model)
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    base_answer = _answer(base, tokenizer, "ping")
    assert base_answer != "pong pong pong"
    progress = _Recorded()
    trained = train(_plan(builtin_model, data, 64, validation_file=data), tmp_path / "job", progress)
    assert trained.steps == 48  # 8 steps an epoch, 6 epochs
    assert trained.trained_tokens == 64 * 6 * ExampleEncoder(tokenizer, 256).encode(PING, 1).trained
    assert progress.steps[-1]["train_loss"] < progress.steps[0]["train_loss"] / 10
    assert [step for step, _ in progress.checkpoints] == [16, 32, 48]
    assert trained.metrics["full_valid_loss"] < 0.1
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model), trained.adapter)
    assert _answer(tuned, tokenizer, "ping") == "pong pong pong"
    reloaded = AutoModelForCausalLM.from_pretrained(builtin_model)
    assert all(torch.equal(before[name], tensor) for name, tensor in reloaded.state_dict().items())
    assert _answer(reloaded, tokenizer, "ping") == base_answer


def test_a_resumed_run_ends_exactly_where_an_unbroken_one_does(builtin_model: Path, tmp_path: Path) -> None:
    examples = [
        {"messages": [{"role": "user", "content": f"say {n}"}, {"role": "assistant", "content": f"{n} {n}"}]}
        for n in range(21)  # the last batch of an epoch is short
    ]
    data = _dataset(tmp_path / "train.jsonl", examples)
    plan = _plan(builtin_model, data, 21, n_epochs=3, batch_size=4, learning_rate=1e-3, checkpoint_every=4)
    unbroken = _Recorded()
    whole = train(plan, tmp_path / "unbroken", unbroken)
    assert whole.steps == 18
    broken = _Recorded(stop_after=10)  # stops before step 11: the last checkpoint is step 8's
    with pytest.raises(Stopped):
        train(plan, tmp_path / "broken", broken)
    [*_, (step, last)] = broken.checkpoints
    assert step == 8
    resumed_progress = _Recorded()
    resumed = train(plan, tmp_path / "broken", resumed_progress, resume=last)
    assert resumed_progress.steps == unbroken.steps[8:]  # the same batches, the same losses
    assert resumed.trained_tokens == whole.trained_tokens
    ours, theirs = (load_file(run.adapter / "adapter_model.safetensors") for run in (resumed, whole))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    kept = sorted(path.name for path in (tmp_path / "broken").glob("step-*"))
    assert kept == ["step-000012", "step-000016", "step-000018"][-KEEP_CHECKPOINTS:]


def test_a_bad_line_met_in_training_names_its_line(builtin_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(PING) + "\n" + "{not json\n")
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        train(_plan(builtin_model, data, 2, n_epochs=1, batch_size=1), tmp_path / "job", _Recorded())
