"""Held-out task metrics: bits per byte of the reference answer, and greedy exact match."""


def process_results(doc, results):
    loglikelihood, is_greedy = results[0]
    return {"bits_per_byte": (loglikelihood, len(doc["answer"].encode("utf-8"))), "acc": int(is_greedy)}
