"""Causal-LM records as token ids and labels: the loss covers the completion (or the assistant's turns) only.

Prompt-completion (TRL's "prompt-completion" format): ``input_ids`` = the tokens the tokenizer puts at a
sequence's start (LLaMA's BOS; none for GPT-2) + the prompt's tokens + the completion's tokens + EOS;
``labels`` = −100 on the start tokens and the prompt, the completion's ids and the EOS after it.

Conversational (TRL's "conversational" format): ``messages`` rendered with ``tokenizer.apply_chat_template``;
the assistant's turns are found by rendering the conversation up to each of them and the same conversation
through it, and diffing the texts (which works for any template that renders a conversation's first turns
the same whatever follows): the characters in between, the turn's content and its end-of-turn marker, are
the ones scored, and a token is scored when it starts among them (the fast tokenizer's offsets).

Truncation to ``data.max_length`` never drops a scored token: a longer example loses tokens from the left,
after its start tokens (the prompt's oldest tokens first), and an example whose scored tokens and one token
of context before them cannot fit is left out and counted (``dropped``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from sweep.errors import UserError

IGNORE = -100  # transformers' ignore index: a position the loss does not score


def start_tokens(tokenizer) -> List[int]:
    """The ids the tokenizer puts before a text's tokens at a sequence's start (``[BOS]`` for LLaMA, ``[CLS]``
    for BERT, none for GPT-2), found by encoding a probe word with and without special tokens."""
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k]
    return []


def fit(ids: Sequence[int], labels: Sequence[int], keep_start: int, max_length: int) -> Optional[Tuple[list, list]]:
    """``(ids, labels)`` cut to at most ``max_length`` tokens from the left, keeping the first ``keep_start``
    (the start tokens) and every scored label; None when the scored tokens from the first to the last, with
    the start tokens and one token of context before them (the first scored token is predicted from it),
    need more than ``max_length``."""
    if len(ids) <= max_length:
        return list(ids), list(labels)
    first = next((i for i, x in enumerate(labels) if x != IGNORE), None)
    if first is None or keep_start + (len(ids) - first) + 1 > max_length:
        return None
    cut = len(ids) - (max_length - keep_start)
    return [*ids[:keep_start], *ids[cut:]], [*labels[:keep_start], *labels[cut:]]


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError(
            f"the tokenizer of {tokenizer.name_or_path} has no end-of-sequence token (eos_token), which ends "
            "every completion; give a model whose tokenizer defines eos_token"
        )
    return tokenizer.eos_token_id


def prompt_completion(tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> List[Tuple[list, list]]:
    """``(input_ids, labels)`` of each prompt-completion record, untruncated (see the module's docstring)."""
    start, eos = start_tokens(tokenizer), _eos_id(tokenizer)
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(prompt_ids, completion_ids):
        context = [*start, *p]
        out.append(([*context, *c, eos], [IGNORE] * len(context) + [*c, eos]))
    return out


def _render(tokenizer, turns, generation: bool) -> str:
    return tokenizer.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=generation)


def assistant_spans(tokenizer, messages: Sequence[Dict[str, str]]) -> Tuple[str, List[Tuple[int, int]]]:
    """The conversation rendered with the chat template, and the character spans [start, end) of its
    assistant turns (found by rendering prefixes and diffing, see the module's docstring).

    Raises:
        UserError: the template renders the first turns of a conversation differently once more follow
            (the diff would not be the turn), naming the turn.
    """
    text = _render(tokenizer, messages, False)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        through = _render(tokenizer, messages[: i + 1], False)
        if i == 0:  # an opening assistant turn: nothing before it to render (templates refuse an empty list)
            at = through.find(str(turn["content"])) if str(turn["content"]) else -1
            before = through[:at] if at >= 0 else None
        else:
            before = next(
                (
                    b
                    for b in (_render(tokenizer, messages[:i], True), _render(tokenizer, messages[:i], False))
                    if through.startswith(b)
                ),
                None,
            )
        if before is None or not text.startswith(through):
            raise UserError(
                f"the chat template of {tokenizer.name_or_path} renders turn {i + 1} of a conversation "
                "differently once later turns follow, so its assistant tokens cannot be found by rendering "
                "prefixes; give prompt-completion records (task.prompt_field, task.completion_field) instead"
            )
        spans.append((len(before), len(through)))
    return text, spans


def conversation(tokenizer, messages: Sequence[Dict[str, str]]) -> Tuple[list, list]:
    """``(input_ids, labels)`` of one conversation: its chat-template text tokenised as is (the template
    writes its own special tokens), labels the ids of the tokens that start within an assistant turn."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    scored = [any(a <= s < b for a, b in spans) and e > s for s, e in enc["offset_mapping"]]
    return ids, [t if keep else IGNORE for t, keep in zip(ids, scored)]


def tokenize_lm(raw, tokenizer, max_length: int):
    """Every split of ``raw`` (``sweep.datafiles.load_lm_data``) as token ids and labels, truncated by ``fit``.

    Returns:
        ``DatasetDict`` of the same splits with columns ``input_ids``, ``attention_mask`` (all ones),
        ``labels`` (ids, −100 where not scored), ``length`` and ``idx``; examples that cannot fit are left
        out (``dropped`` counts them).

    Raises:
        UserError: conversational records with a tokenizer without a chat template; a tokenizer without an
            EOS token (prompt-completion); a split in which no example fits ``max_length``; a template that
            renders prefixes inconsistently (``assistant_spans``).
    """
    import datasets

    splits = {}
    for split, table in raw.items():
        if "messages" in table.column_names:
            if not getattr(tokenizer, "chat_template", None):
                raise UserError(
                    f"the records hold conversations (messages) but the tokenizer of {tokenizer.name_or_path} has "
                    "no chat template to render them; give a chat model's tokenizer (one with chat_template) or "
                    "prompt-completion records"
                )
            pairs = [conversation(tokenizer, m) for m in table["messages"]]
            # the template writes the start tokens itself (or not): kept when every conversation opens with them
            start = start_tokens(tokenizer)
            keep_start = len(start) if all(ids[: len(start)] == start for ids, _ in pairs) else 0
        else:
            pairs = prompt_completion(tokenizer, table["prompt"], table["completion"])
            keep_start = len(start_tokens(tokenizer))
        rows = {"input_ids": [], "attention_mask": [], "labels": [], "length": [], "idx": []}
        shortest = None
        for (ids, labels), idx in zip(pairs, table["idx"]):
            fitted = fit(ids, labels, keep_start, max_length)
            scored = sum(x != IGNORE for x in labels)
            shortest = scored if shortest is None else min(shortest, scored)
            if fitted is None:
                continue
            rows["input_ids"].append(fitted[0])
            rows["attention_mask"].append([1] * len(fitted[0]))
            rows["labels"].append(fitted[1])
            rows["length"].append(len(fitted[0]))
            rows["idx"].append(idx)
        if not rows["idx"]:
            raise UserError(
                f"no {split} example fits data.max_length={max_length}: every completion (the shortest holds "
                f"{shortest} scored tokens) needs more, with {keep_start} start token(s) and one token of context; "
                "give a larger data.max_length"
            )
        splits[split] = datasets.Dataset.from_dict(rows)
    return datasets.DatasetDict(splits)


def dropped(raw, tokenized) -> Dict[str, int]:
    """Examples of each split left out because their completion cannot fit: rows read − rows tokenised."""
    return {split: len(raw[split]) - len(tokenized[split]) for split in tokenized}
