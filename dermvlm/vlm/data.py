"""Conversations -> token ids and labels for the VLM, with the tokenizer's own chat template.

Loss is only on assistant turns: each assistant reply (with its end-of-turn token) is located
as a character span of the rendered chat and mapped onto tokens through offsets; every other
token gets -100. `<image>` is expanded to the VLM's number of image tokens.
"""
import json
import sys
import warnings
from pathlib import Path

import torch

from dermvlm.clip.data import train_transform
from dermvlm.errors import DataError
from dermvlm.imaging import eval_transform, try_open_image
from dermvlm.vlm.model import IMAGE_TOKEN

ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant",
         "system": "system"}


def to_messages(conversation, where=""):
    """LLaVA turns -> chat messages, checking for exactly one <image> (in a user turn)."""
    messages = [{"role": ROLES.get(t.get("from"), t.get("from")), "content": t["value"]}
                for t in conversation]
    count = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if count != 1:
        raise DataError(f"{where}: a conversation needs exactly one {IMAGE_TOKEN} token, found "
                        f"{count}")
    if not any(IMAGE_TOKEN in m["content"] for m in messages if m["role"] == "user"):
        raise DataError(f"{where}: {IMAGE_TOKEN} must be in a user turn")
    return messages


def encode_conversation(tokenizer, messages, num_image_tokens, max_length, where=""):
    """(input_ids, labels) lists; truncated (with a warning) past max_length."""
    expanded = [dict(m, content=m["content"].replace(IMAGE_TOKEN, IMAGE_TOKEN * num_image_tokens))
                for m in messages]
    spans = []
    for k, message in enumerate(expanded):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(expanded[:k], tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(expanded[:k + 1], tokenize=False)
        if not full.startswith(prefix):
            raise DataError(f"{where}: the chat template does not render turns as prefixes")
        spans.append((len(prefix), len(full)))
    text = tokenizer.apply_chat_template(expanded, tokenize=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    labels = [token if any(s <= start and end <= e for s, e in spans) and end > start else -100
              for token, (start, end) in zip(ids, offsets)]
    if len(ids) > max_length:
        warnings.warn(f"{where}: conversation of {len(ids)} tokens truncated to {max_length}")
        ids, labels = ids[:max_length], labels[:max_length]
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if ids.count(image_id) != num_image_tokens:
            raise DataError(f"{where}: max_length {max_length} cuts through the image tokens")
    return ids, labels


def caption_conversation(caption):
    return [{"from": "human", "value": f"{IMAGE_TOKEN}\nDescribe the image."},
            {"from": "gpt", "value": caption}]


def load_conversations(spec, stage):
    """[(image path, LLaVA turns)] for stage 1 (captions) or 2 (conversations).

    spec: a SynthDerm folder (derm1m.csv captions / vqa_llava.json), a LLaVA JSON file, or a
    manifest whose records carry captions or meta.conversations."""
    path = Path(spec)
    if path.is_dir() and (path / "vqa_llava.json").is_file() and stage == 2:
        path = path / "vqa_llava.json"
    if path.suffix == ".json":
        items = json.loads(path.read_text())
        return [(str(path.parent / item["image"]), item["conversations"]) for item in items]
    from dermvlm.clip.data import load_records
    out = []
    for record in load_records(spec):
        if stage == 1 and record.captions:
            out.append((record.image, caption_conversation(record.captions[0])))
        elif stage == 2 and record.meta.get("conversations"):
            out.append((record.image, record.meta["conversations"]))
    if not out:
        raise DataError(f"{spec}: no {'captions' if stage == 1 else 'conversations'} found")
    return out


class ConversationDataset(torch.utils.data.Dataset):
    """Indexed by (epoch, index) (see clip.data.BatchOrder); yields token ids, labels, pixels."""

    def __init__(self, items, tokenizer, num_image_tokens, image_size, max_length, train=True,
                 seed=0):
        self.items, self.tokenizer = items, tokenizer
        self.num_image_tokens, self.max_length, self.seed = num_image_tokens, max_length, seed
        self.transform = (train_transform if train else eval_transform)(image_size)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        epoch, index = key
        image_path, conversation = self.items[index]
        image = try_open_image(image_path)
        if image is None:
            print(f"warning: skipping unreadable image {image_path}", file=sys.stderr)
            return None
        where = f"{image_path} (item {index})"
        try:
            messages = to_messages(conversation, where)
        except DataError as exc:
            print(f"warning: skipping: {exc}", file=sys.stderr)
            return None
        ids, labels = encode_conversation(self.tokenizer, messages, self.num_image_tokens,
                                          self.max_length, where)
        torch.manual_seed(hash((self.seed, epoch, index)) % (2 ** 31))
        return torch.tensor(ids), torch.tensor(labels), self.transform(image)


def collate(batch, pad_id):
    """Right-padded (input_ids, attention_mask, labels, pixels); None items dropped."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    length = max(len(b[0]) for b in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, (x, y, _) in enumerate(batch):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = x, y, 1
    return ids, mask, labels, torch.stack([b[2] for b in batch])
