"""Evaluation: ROUGE-1/2/L (the `rouge-score` package, F-measure x 100) of summaries made by the batch
summarization path, and the lead-sentences baseline the demo compares against."""

from __future__ import annotations

import re
import warnings

from led_flax.decoding.generation import GenerationConfig
from led_flax.io.pretrained import LoadedModel
from led_flax.summarization.batch import InputWarning, SummarizeOptions, summarize

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions, references) -> dict:
    """Mean ROUGE F-measures (x 100) with stemming, over aligned lists."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: 100 * v / n for k, v in totals.items()}


def lead_sentences(text: str, n: int = 3) -> str:
    """The first `n` sentences of a document: the classic extractive baseline."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(sentences[:n])


def generate_summaries(module, params, config, tokenizer, texts, *, num_beams: int, max_length: int,
                       batch_size: int, buckets=None, no_repeat_ngram_size: int = 3) -> list[str]:
    """Summaries of `texts` through `led_flax.summarize` with in-memory params (host arrays); documents
    longer than the model's positions are cut to them, as in training."""
    model = LoadedModel(module=module, params=params, config=config,
                        generation_config=GenerationConfig.from_hf(None, config), tokenizer=tokenizer,
                        source="the training run's current params")
    options = SummarizeOptions(batch_size=batch_size, buckets=buckets, progress_bar=False, compilation_cache=None,
                               generation={"num_beams": num_beams, "max_length": max_length,
                                           "no_repeat_ngram_size": no_repeat_ngram_size})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        return summarize(texts, model, options)
