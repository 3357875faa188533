"""What a finished run prints: its eval metrics (with the ± a one-run table cell shows) and its training."""

from __future__ import annotations

from sft_lab.record import RunRecord


def run_summary(record: RunRecord) -> str:
    lines = [f"{record.name}: {record.status}  ({record.run_dir})"]
    train = record.train or {}
    if train:
        lines.append(f"  train: loss {_num(train.get('first_loss'))} -> {_num(train.get('final_loss'))} over "
                     f"{train.get('steps')} steps, {train.get('tokens_seen', 0):,} tokens, "
                     f"{_num(train.get('wall_s'), 1)} s ({_num(train.get('tokens_per_s'), 0)} tokens/s)")
    rows = [(task, metric, v) for task, ms in sorted((record.eval or {}).items()) for metric, v in sorted(ms.items())]
    if rows:
        width = max(len(f"{t}/{m}") for t, m, _ in rows)
        lines.append(f"  {'eval':<{width}}  value    ± 95% (items only)")
        for task, metric, v in rows:
            half = f"± {1.96 * v['stderr']:.4f}" if v.get("stderr") else ""
            lines.append(f"  {task + '/' + metric:<{width}}  {_num(v.get('value'))}  {half}")
    lines += [f"  WARNING: {w}" for w in record.warnings]
    return "\n".join(lines)


def _num(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"
