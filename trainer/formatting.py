"""From examples to token ids: the chat template, completion-only labels, batching.

The prompt is rendered exactly as the bot's engine renders it at answer time
(the tokenizer's chat template with the generation prompt), so the adapter
learns to continue the same text it will be asked to continue. Labels are -100
on every prompt token: the loss counts only the answer and its end-of-turn
token, which teaches the model when to stop.

Batches group examples of similar length (length-grouped sampling, seeded) and
pad only to the longest row of each batch, so little compute goes to padding.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # what torch's cross-entropy (and transformers' loss) skip


class FormattingError(ValueError):
    """The tokenizer's chat template cannot be split into prompt and answer."""


ZERO_WIDTH_SPACE = "\u200b"


@functools.lru_cache(maxsize=8)  # per tokenizer: the engine asks for every prompt
def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The texts a tokenizer turns into special tokens (`<|im_start|>`, `<|endoftext|>`…)."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found.update(token.content for token in added.values() if getattr(token, "special", False))
    return tuple(sorted((t for t in found if len(t) > 1), key=len, reverse=True))


def defuse_special_tokens(text: str, special_tokens: Iterable[str]) -> str:
    """`text` with every special-token string broken by a zero-width space.

    The chat template is rendered to text and then tokenised, so a user who types
    `<|im_start|>system` would otherwise open a real system turn of their own. The
    zero-width space makes the tokenizer read it as plain text; people see no change.
    """
    for token in special_tokens:
        while token in text:
            text = text.replace(token, token[0] + ZERO_WIDTH_SPACE + token[1:])
    return text


def plain_messages(messages: Sequence[dict[str, str]], tokenizer: Any) -> list[dict[str, str]]:
    """The messages with no special token in their text: every path that renders a chat
    template (the engine's prompts, training rows, the gate's questions) calls this, so
    imported pairs, edited answers and API prompts are as safe as Discord messages."""
    specials = special_token_strings(tokenizer)
    return [{**m, "content": defuse_special_tokens(m["content"], specials)}
            if isinstance(m.get("content"), str) else m for m in messages]


def prompt_messages(question: str, *, system: str = "", history: list[dict[str, str]] | None = None,
                    default_system: str | None = None) -> list[dict[str, str]]:
    """The conversation up to the question: system prompt (if any), history, the question."""
    messages = []
    prompt = system or default_system
    if prompt:
        messages.append({"role": "system", "content": prompt})
    messages.extend(history or [])
    messages.append({"role": "user", "content": question})
    return messages


def notes_prompt(question: str, notes: Sequence[tuple[str, str]]) -> str:
    """The user's turn with channel notes: approved (question, answer) pairs the channel
    memory found near `question`, then the question. One formatter for serving (the bot)
    and for training rows, so the adapter learns the prompts it is served."""
    if not notes:
        return question
    lines = "\n".join(f"- Q: {q}\n  A: {a}" for q, a in notes)
    return (f"Channel notes (approved answers to earlier questions; use one only if it "
            f"answers this question):\n{lines}\n\nQuestion: {question}")


def end_of_turn_id(tokenizer: Any) -> int | None:
    return tokenizer.eos_token_id


def encode_example(tokenizer: Any, messages: list[dict[str, str]], answer: str,
                   max_seq_len: int) -> dict[str, Any]:
    """input_ids and labels of one example; `truncated`/`dropped` say what happened.

    The prompt and the answer are tokenised separately (prompt as the engine does
    it, answer as the text the template puts after it) so the boundary is exact.
    """
    # "<|im_end|>" typed into an answer would otherwise end the turn where it stands
    messages = plain_messages(messages + [{"role": "assistant", "content": answer}], tokenizer)
    prompt_text = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                                add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise FormattingError("the chat template renders the conversation differently with "
                              "and without the answer, so the prompt cannot be masked; use a "
                              "model whose template appends the assistant turn")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    eot = end_of_turn_id(tokenizer)
    if eot is not None:
        if eot in answer_ids:
            # what the template adds after the end-of-turn token (a newline) is never generated
            answer_ids = answer_ids[:answer_ids.index(eot) + 1]
        else:
            answer_ids = answer_ids + [eot]  # templates without one: still learn to stop
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    truncated = len(input_ids) > max_seq_len
    input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    answer_tokens = sum(1 for label in labels if label != IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels,
            "length": len(input_ids), "answer_tokens": answer_tokens,
            "truncated": truncated, "dropped": answer_tokens == 0}


@dataclass(frozen=True)
class EncodeStats:
    examples: int
    truncated: int
    dropped: int
    tokens: int
    answer_tokens: int


def encode_dataset(dataset: Any, tokenizer: Any, *, max_seq_len: int,
                   default_system: str | None = None,
                   name: str = "train") -> tuple[Any, EncodeStats]:
    """Tokenise a dataset of examples (see trainer.data); long rows are cut, with a count."""

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        messages = prompt_messages(row["question"], system=row["system"],
                                   history=json.loads(row["history"] or "[]"),
                                   default_system=default_system)
        return encode_example(tokenizer, messages, row["answer"], max_seq_len)

    if len(dataset) == 0:
        return dataset, EncodeStats(0, 0, 0, 0, 0)
    encoded = dataset.map(encode, desc=f"tokenising {name}", load_from_cache_file=False)
    truncated = sum(encoded["truncated"])
    dropped = sum(encoded["dropped"])
    if truncated:
        log.warning("%s: %d of %d example(s) longer than max_seq_len = %d tokens were cut%s",
                    name, truncated, len(encoded), max_seq_len,
                    f"; {dropped} had no answer token left and were dropped" if dropped else "")
    if dropped:
        encoded = encoded.filter(lambda row: not row["dropped"], load_from_cache_file=False)
    stats = EncodeStats(len(encoded), truncated, dropped, sum(encoded["length"]),
                        sum(encoded["answer_tokens"]))
    return encoded, stats


MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")


class LengthGroupedBatches:
    """Batches of indices of similar length: shuffled buckets, sorted within (seeded).

    The order is a pure function of (seed, epoch), which is what lets a resumed
    run skip exactly the batches it had already trained on.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int,
                 group_by_length: bool = True):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if not self.group_by_length:
            order = torch.randperm(len(self.lengths), generator=generator).tolist()
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # buckets of up to 50 batches, sorted by length inside; transformers' own default
        # makes one-batch buckets below 4 x 8 batches (no grouping on small sets): here at
        # least two buckets, so batches still mix across epochs
        buckets = max(1, min(50, len(self.lengths) // (2 * self.batch_size)))
        order = get_length_grouped_indices(self.lengths, self.batch_size,
                                           mega_batch_mult=buckets, generator=generator)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # the batches of a bucket come out longest first: shuffle them, but keep the batch
        # with the longest row first so that running out of memory happens at step 1
        rest = torch.randperm(len(batches) - 1, generator=generator).tolist()
        return batches[:1] + [batches[1 + i] for i in rest]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch(0))


def make_collator(tokenizer: Any) -> Any:
    """Dynamic padding to the longest row of the batch; labels padded with -100."""
    from transformers import DataCollatorForSeq2Seq

    # right padding: positions of the real tokens then start at 0, as at inference
    tokenizer.padding_side = "right"
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX,
                                  return_tensors="pt")


def collate(dataset: Any, indices: list[int], collator: Any) -> dict[str, Any]:
    rows = dataset.select(indices) if len(indices) != len(dataset) else dataset
    features = [{k: row[k] for k in MODEL_COLUMNS} for row in rows]
    return collator(features)


def padding_efficiency(lengths: list[int], batches: list[list[int]],
                       pad_to: int | None = None) -> float:
    """Share of real tokens among all token positions computed (1.0 = no padding)."""
    real = sum(lengths[i] for batch in batches for i in batch)
    total = sum(len(batch) * (pad_to or max(lengths[i] for i in batch)) for batch in batches)
    return real / total if total else 1.0
