"""``--prompt`` / ``--infill`` / ``--stop-at-eos``: text -> a :class:`~pipeline.sampling.template.GenerationTemplate`
with the export's tokenizer, framed like a training row.

Text is encoded without special tokens, truncation and padding off (as preprocess encodes documents).
When the export's preprocessed data is ``--mode lm1b`` every training sentence is ``[CLS] ids [SEP]``,
so a prompt gets the leading [CLS] (it is the start of a row) and an infill template both (it is a
whole sentence); ``owt`` rows start mid-stream and get neither, nor does an export that records no
data settings (``data`` in config.json; an older export: a readable preprocessed artifact). The EOS of
``--stop-at-eos`` is the token that ends a document in that data: [SEP] for lm1b, the ``--separator``
for owt, else the tokenizer's sep (or eos) token.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.common.artifacts import ConfigError

from .template import GenerationTemplate, infill_template, parse_infill, prompt_template


@dataclass(frozen=True)
class Conditioning:
    """Tokenised prompts (``kind="prompt"``: one id list per prompt) or an infill template (one row
    of ids with its ``free`` flags); :meth:`template` lays them out over ``seq_len`` positions."""

    kind: str
    texts: tuple[str, ...]
    rows: tuple[tuple[int, ...], ...]
    free: tuple[bool, ...] = ()  # infill: True where [MASK] marked a position

    @property
    def length(self) -> int:
        """The tokens of the longest row (the sequence length an infill template fixes)."""
        return max(map(len, self.rows))

    def template(self, seq_len: int) -> GenerationTemplate:
        try:
            if self.kind == "infill":
                if seq_len != self.length:
                    raise ValueError(f"the infill template has {self.length} tokens, seq_len is {seq_len}")
                return infill_template(list(self.rows[0]), list(self.free), self.texts[0])
            return prompt_template([list(r) for r in self.rows], seq_len, self.texts)
        except ValueError as exc:
            raise ConfigError(f"--{self.kind}: {exc}") from None


def prompt_texts(prompt: str) -> tuple[tuple[str, ...], Path | None]:
    """(prompts, file): an existing file gives one prompt per non-empty line, anything else is the prompt."""
    path = Path(prompt)
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a prompt longer than a path may be
        is_file = False
    if is_file:
        texts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        if not texts:
            raise ConfigError(f"--prompt {prompt}: the file holds no prompt (no non-empty line)")
        return texts, path
    if not prompt.strip():
        raise ConfigError("--prompt is empty")
    return (prompt,), None


def data_settings(export_config: dict) -> dict:
    """mode / special ids of the export's training data: config.json's ``data``, for an older export its
    preprocess manifest ({} when it names no readable artifact)."""
    from pipeline.common.export_contents import data_settings as recorded

    data = recorded(export_config)
    return {"mode": data.get("mode"), "special_ids": data.get("special_ids") or {}} if data else {}


def stop_token_id(export_config: dict, tokenizer_info: dict) -> int:
    """The id that ends a document in the training data (module docstring)."""
    settings = data_settings(export_config)
    data_ids, tok_ids = settings.get("special_ids", {}), tokenizer_info.get("special_ids", {})
    key = "separator" if settings.get("mode") == "owt" else "sep"
    for found in (data_ids.get(key), tok_ids.get("sep"), tok_ids.get("eos")):
        if found is not None:
            return int(found)
    raise ConfigError("--stop-at-eos: the tokenizer has no [SEP] / EOS token")


@dataclass(frozen=True)
class TextCodec:
    """Text -> ids as the export's training rows were made: ``encode`` (no special tokens, truncation and
    padding off), the row's ``head`` / ``tail`` framing (lm1b: [CLS] / [SEP]) and the data's special ids."""

    backend: object
    head: tuple[int, ...]
    tail: tuple[int, ...]
    special_ids: dict
    tokenizer_ids: dict  # the tokenizer's own special ids (where the data records none)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids


def text_codec(export_config: dict, tokenizer_info: dict, tokenizer_name: str | None = None) -> TextCodec:
    """The export's :class:`TextCodec` (its tokenizer, or the equivalent ``tokenizer_name``; checked)."""
    from pipeline.common.hf_assets import load_tokenizer_spec

    tok = load_tokenizer_spec(tokenizer_name or tokenizer_info.get("name_or_path"))
    if tokenizer_info.get("identity") and tok.info()["identity"] != tokenizer_info["identity"]:
        raise ConfigError(f"tokenizer {tok.name_or_path!r} is not the export's (vocabulary identity differs)")
    backend = tok.backend  # a fresh instance: the shipped MiniLM one truncates to 128 and pads
    backend.no_truncation()
    backend.no_padding()
    settings = data_settings(export_config)
    ids_of = settings.get("special_ids") or tok.special_ids
    lm1b = settings.get("mode") == "lm1b"
    head = (ids_of["cls"],) if lm1b and ids_of.get("cls") is not None else ()
    tail = (ids_of["sep"],) if lm1b and ids_of.get("sep") is not None else ()
    return TextCodec(backend, head, tail, ids_of, tok.special_ids)


def load_conditioning(prompt: str | None, infill: str | None, export_config: dict,
                      tokenizer_info: dict, tokenizer_name: str | None = None) -> Conditioning | None:
    """Tokenise ``prompt`` (text or file) or ``infill`` (template) with the export's tokenizer (or the
    equivalent ``tokenizer_name``); None when neither is given."""
    if prompt is None and infill is None:
        return None
    codec = text_codec(export_config, tokenizer_info, tokenizer_name)
    encode, head, tail = codec.encode, list(codec.head), list(codec.tail)
    mask_id = (tokenizer_info.get("special_ids") or codec.tokenizer_ids).get("mask")
    flag = "--prompt" if prompt is not None else "--infill"

    def check(ids: list[int], text: str) -> list[int]:
        if mask_id is not None and mask_id in ids:
            raise ConfigError(f"{flag} {text!r}: holds the [MASK] token; mark generated positions with --infill")
        return ids

    if prompt is not None:
        texts, _ = prompt_texts(prompt)
        rows = []
        for text in texts:
            ids = check(encode(text), text)
            if not ids:
                raise ConfigError(f"--prompt {text!r} encodes to no token")
            rows.append(tuple(head + ids))
        return Conditioning("prompt", texts, tuple(rows))
    try:
        parts = parse_infill(infill)
    except ValueError as exc:
        raise ConfigError(f"--infill: {exc}") from None
    ids, free = list(head), [False] * len(head)
    for part in parts:
        piece = [0] * part if isinstance(part, int) else check(encode(part), infill)  # 0: a free slot
        ids += piece
        free += [isinstance(part, int)] * len(piece)
    ids, free = ids + tail, free + [False] * len(tail)
    return Conditioning("infill", (infill,), (tuple(ids),), tuple(free))
