"""Generative task metrics: IFEval through lm-eval's checkers; ROUGE-L and length for generated answers."""

from functools import lru_cache


def ifeval_results(doc, results):
    from sft_lab.ifeval import process

    return process(doc, results[0])


def pooled(items):
    """Instruction-level accuracy: every instruction of every prompt counts once (lm-eval's aggregation)."""
    flat = [x for item in items for x in item]
    return sum(flat) / len(flat) if flat else float("nan")


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def gen_results(doc, results):
    answer = results[0]
    return {"rougeL": _scorer().score(doc["reference"], answer)["rougeL"].fmeasure, "words": len(answer.split())}
