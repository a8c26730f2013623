"""Tiny randomly initialised models with tokenizers trained here on a built-in text.

They exist so tests and the local mesh have a model of every task without a model hub. The
weights are random but deterministic (fixed seeds), so every machine builds identical files.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SEED = 1234
MAX_POSITIONS = 512
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
SENTIMENT_LABELS = ("NEGATIVE", "POSITIVE")

_PARAGRAPHS = (
    "The capital of France is Paris, a city on the river Seine. Visitors walk along the banks, "
    "climb the tower built for the exhibition of 1889 and eat bread, cheese and small cakes.",
    "Machine learning models turn text into numbers. A tokenizer splits each sentence into "
    "pieces, an embedding layer maps every piece to a vector, and attention layers mix those "
    "vectors until the model can predict the next word or classify the whole document.",
    "The weather changed quickly that morning. Dark clouds rolled over the hills, the wind "
    "grew cold and heavy rain fell on the fields until the afternoon sun came back out.",
    "She opened the kitchen window, chopped two onions and a clove of garlic, and stirred "
    "them slowly in warm olive oil. Tomatoes, salt, pepper and fresh basil finished the sauce.",
    "Servers answer requests from clients over the network. When one machine is busy, a load "
    "balancer sends the next request somewhere else, and health checks remove broken servers.",
    "The team played well in the second half, scoring three goals after a slow start. Their "
    "coach said the players trained hard all winter and deserved every point of the season.",
    "Long ago, sailors crossed the ocean with simple maps and the stars as their guide. Many "
    "journeys took months, and the ships carried spices, silk, tea and letters home.",
    "Music fills the old hall every Friday night. A piano, two violins and a cello play quiet "
    "songs first, then faster dances while people clap, laugh and sing along together.",
    "Doctors, nurses and teachers work long hours. A farmer wakes before dawn to feed the cows, "
    "sheep, horses and chickens, while bakers light their ovens and drivers start the buses.",
    "In the forest live foxes, bears, wolves, deer, owls and thousands of insects. Tall pine "
    "trees, oaks and birches cover the mountains, and clear streams run down to the lake.",
    "Every year the library buys new books about history, physics, chemistry, biology, poetry "
    "and painting. Students borrow them, read them carefully and write essays and reports.",
    "The company announced strong quarterly results: revenue increased, costs decreased and "
    "shares rose sharply. Investors expect growth to continue, although markets remain uncertain.",
    "Colours of the rainbow are red, orange, yellow, green, blue, indigo and violet. Artists mix "
    "white and black paint to make lighter or darker shades of grey, pink, brown and purple.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday make a week. January, "
    "February, March, April, May, June, July, August, September, October, November, December.",
    "To install the program, download the package, unpack the archive and run the setup "
    "script. If an error appears, check the logs, update your drivers and restart the computer.",
    "Children built a sandcastle near the harbour while fishermen repaired their nets. Seagulls "
    "screamed overhead, waves crashed against the rocks and the lighthouse blinked at sunset.",
    "The scientist measured temperature, pressure and humidity every hour. Her experiment "
    "compared several hypotheses, and the evidence strongly supported the simplest explanation.",
    "Questions and answers: Who wrote this? Where do you live? When does the train leave? Why "
    "is the sky blue? How much does it cost? Which road leads to the village museum?",
    "Please summarize the following article. Translate English to German. What is the answer "
    "to the question? Yes, no, maybe. Thank you very much for your help, have a nice day!",
    "Numbers and symbols also appear in text: 0 1 2 3 4 5 6 7 8 9, 10%, $20, 3.14, a+b=c, "
    "(x, y), [list], {key: value}, e-mail@example.com, https://example.org/path?q=1#top.",
)
_PEOPLE = ("Alice", "Bob", "Maria Garcia", "John Smith", "Wei Chen", "Fatima", "Olga", "Ravi")
_PLACES = ("Paris", "London", "Berlin", "Tokyo", "New York", "Cairo", "Lima", "Sydney")
_OPINIONS = ("wonderful", "terrible", "delicious", "boring", "excellent", "awful", "pleasant")


def training_corpus() -> list[str]:
    """The text every tiny tokenizer is trained on (fixed, so vocabularies are reproducible)."""
    lines = list(_PARAGRAPHS)
    for i, person in enumerate(_PEOPLE):
        for j, place in enumerate(_PLACES):
            opinion = _OPINIONS[(i + j) % len(_OPINIONS)]
            lines.append(f"{person} travelled to {place} and thought the trip was {opinion}.")
            lines.append(f"I really liked it. I did not like it. The film was {opinion}!")
    return lines


# ChatML, as SmolLM2 and Qwen write it; tools (when given) are listed in the system block.
CHAT_TEMPLATE = (
    "{%- set msgs = messages -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if msgs and msgs[0]['role'] == 'system' -%}"
    "{{- msgs[0]['content'] + '\\n\\n' -}}"
    "{%- set msgs = msgs[1:] -%}"
    "{%- endif -%}"
    "{{- 'You can call these tools. To call one, reply with '"
    ' + \'<tool_call>{"name": ..., "arguments": {...}}</tool_call>.\\n\' -}}'
    "{%- for tool in tools -%}{{- (tool | tojson) + '\\n' -}}{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in msgs -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}{%- endif -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{{- '<tool_call>' + ((call['function'] if 'function' in call else call) | tojson)"
    " + '</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1536,
        special_tokens=list(CHATML_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer)
    endoftext, im_start, im_end = CHATML_SPECIALS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=im_start,
        eos_token=im_end,
        pad_token=endoftext,
        unk_token=endoftext,
        model_max_length=MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )


def _wordpiece_tokenizer():
    """BERT-style WordPiece whose vocabulary comes from a BPE trained on the corpus.

    tokenizers' own WordPiece trainer numbers its "##" alphabet in hash order, so two runs give
    different vocabularies; its BPE trainer is reproducible. Every BPE piece is kept both as a
    word start and as a "##" continuation, which is all greedy WordPiece matching needs.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertTokenizerFast

    pad, unk, cls, sep, mask = BERT_SPECIALS
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bpe = Tokenizer(models.BPE(unk_token=unk))
    bpe.normalizer, bpe.pre_tokenizer = normalizer, pre_tokenizer
    bpe.train_from_iterator(
        training_corpus(),
        trainers.BpeTrainer(vocab_size=512, special_tokens=[unk], show_progress=False),
    )
    pieces = [p for p, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]) if p != unk]
    vocab_list = [*BERT_SPECIALS, *pieces, *(f"##{piece}" for piece in pieces)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab_list)}, unk_token=unk))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab_list.index(cls)), (sep, vocab_list.index(sep))],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=True,
        pad_token=pad,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        model_max_length=MAX_POSITIONS,
    )


def _seq2seq_tokenizer():
    """T5-style: Metaspace pieces from a BPE (its trainer is reproducible, Unigram's is not)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    pad, eos, unk = T5_SPECIALS
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=list(T5_SPECIALS), show_progress=False
    )
    tok.train_from_iterator(training_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        eos_token=eos,
        unk_token=unk,
        model_max_length=MAX_POSITIONS,
    )


def build_tiny_llama(out_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _bpe_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).float()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def build_tiny_llama_lora(out_dir: Path, base_dir: Path) -> None:
    """A rank-8 adapter on q_proj/v_proj with random A and B, so it visibly changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    model = get_peft_model(base, lora)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)


def _build_bert(out_dir: Path, model_class: str, **config_kwargs) -> None:
    import torch
    import transformers
    from transformers import BertConfig

    tokenizer = _wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    torch.manual_seed(SEED)
    model = getattr(transformers, model_class)(config).float()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _labels(names: tuple[str, ...]) -> dict:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def build_tiny_bert_fill_mask(out_dir: Path) -> None:
    _build_bert(out_dir, "BertForMaskedLM")


def build_tiny_bert_ner(out_dir: Path) -> None:
    _build_bert(out_dir, "BertForTokenClassification", **_labels(NER_LABELS))


def build_tiny_bert_sentiment(out_dir: Path) -> None:
    _build_bert(out_dir, "BertForSequenceClassification", **_labels(SENTIMENT_LABELS))


def build_tiny_bert_reranker(out_dir: Path) -> None:
    _build_bert(out_dir, "BertForSequenceClassification", num_labels=1)


def build_tiny_t5(out_dir: Path) -> None:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _seq2seq_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=32,
        num_heads=2,
        num_layers=2,
        num_decoder_layers=2,
        d_ff=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # Configs take extra keywords at run time; their dataclass_transform types only fields.
        decoder_start_token_id=tokenizer.pad_token_id,  # type: ignore[call-arg]
    )
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config).float()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
