"""The subject's tokens: where the subject's words sit in the prompt, and how those positions travel with a
conditioning through ComfyUI's graph to the sampler."""

from __future__ import annotations

import torch


# Key under which the subject's token positions travel in a conditioning entry's dict. ComfyUI's
# conditioning nodes (combine, concat, ControlNet apply, area/mask) copy these dicts, so the positions
# reach the sampler through ordinary graphs.
SUBJECT_KEY = "pickdraw_subject"


def _same_token(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):  # Textual-Inversion embedding vectors
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


def _readable_tokens(clip, chunk) -> list[str]:
    """The chunk's tokens as words, without the padding after the end token."""
    ids = [t[0] for t in chunk]
    end = next((i for i in range(1, len(ids)) if not isinstance(ids[i], torch.Tensor) and ids[i] == ids[-1]), len(ids))
    chunk = chunk[:end + 1]
    try:
        return [word for _, word in clip.tokenizer.untokenize(chunk)]
    except Exception:  # a tokenizer without untokenize: show the ids
        return [str(t[0]) if not isinstance(t[0], torch.Tensor) else "<embedding>" for t in chunk]


def subject_tokens(clip, text: str, subject: str) -> dict:
    """Positions of the subject's tokens in the prompt (across 77-token chunks), as the sampler needs them.

    The subject is tokenized on its own and searched as a contiguous run in the prompt's tokens, so multi-token
    words, "sks dog" and Textual-Inversion names (embedding:...) work. A subject absent from the prompt is a
    ValueError listing the prompt's tokens.
    """
    if not subject.strip():
        raise ValueError("subject is empty: name the subject as it is written in the prompt (e.g. 'dog', 'sks dog')")
    prompt = clip.tokenize(text)
    alone = clip.tokenize(subject)
    key = "l" if "l" in prompt else next(iter(prompt))
    chunk = alone[key][0]
    end = next((i for i in range(1, len(chunk)) if not isinstance(chunk[i][0], torch.Tensor) and chunk[i][0] == chunk[-1][0]),
               len(chunk))
    wanted = [t[0] for t in chunk[1:end]]  # without the start token and from the end/padding token on
    flat = [t[0] for c in prompt[key] for t in c]
    indices = []
    for start in range(len(flat) - len(wanted) + 1):
        if wanted and all(_same_token(flat[start + i], w) for i, w in enumerate(wanted)):
            indices.extend(range(start, start + len(wanted)))
    if not indices:
        listed = " ".join(_readable_tokens(clip, prompt[key][0]))
        raise ValueError(f"the subject '{subject}' is not in the prompt; the prompt's tokens are: {listed}")
    return {"subject": subject, "prompt": text, "indices": indices}


def with_subject(conditioning, info: dict):
    """The conditioning with the subject's token positions in every entry's dict."""
    return [[c[0], {**c[1], SUBJECT_KEY: info}] for c in conditioning]


def subject_of(conditioning) -> dict:
    for c in conditioning:
        if SUBJECT_KEY in c[1]:
            return c[1][SUBJECT_KEY]
    raise ValueError(
        "the positive conditioning carries no Pick-and-Draw subject: encode the prompt with "
        "'Subject Prompt (Pick-and-Draw)' (the subject's token positions travel with the conditioning; "
        "Conditioning (Concat) keeps those of its conditioning_to input only, so connect the Subject Prompt there)"
    )


# Key in transformer_options under which the sampling wrappers name the positive conditioning entries that carry
# the subject (by ComfyUI's per-entry uuid); a tuple, since ComfyUI's option merge extends lists.
_SUBJECT_ENTRIES = "pickdraw_subject_entries"


def with_subject_entries(conds, model_options: dict) -> dict:
    """model_options whose transformer_options name the positive entries that carry the subject, so that a
    conditioning combined from several prompts records maps and features of the subject's prompt only (as they
    are when no entry carries it: an engine given the token positions directly)."""
    positive = conds[0] if conds and conds[0] is not None else []
    entries = tuple(c.get("uuid") for c in positive if SUBJECT_KEY in c)
    if not entries or None in entries:  # no subject entry, or a ComfyUI that does not name its entries
        return model_options
    transformer_options = {**model_options.get("transformer_options", {}), _SUBJECT_ENTRIES: entries}
    return {**model_options, "transformer_options": transformer_options}


def recorded_chunks(extra_options: dict) -> list[int]:
    """cond_or_uncond as the recorder reads it (0: record these rows): a conditional chunk of another prompt (the
    other input of a Combine) is marked like an unconditional one. Without the uuids (a caller that is not one of
    our sampling wrappers) every conditional chunk records."""
    flags = [int(flag) for flag in extra_options["cond_or_uncond"]]
    entries, uuids = extra_options.get(_SUBJECT_ENTRIES), extra_options.get("uuids")
    if entries is None or uuids is None or len(uuids) != len(flags):
        return flags
    return [0 if flag == 0 and uuid in entries else 1 for flag, uuid in zip(flags, uuids)]
