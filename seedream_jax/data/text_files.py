"""Reading text and JSONL files line by line: a line that is not UTF-8, not JSON or lacks a field
is skipped and counted by reason, so one bad line never loses the file (``data/sources.py``'s text
sources and ``data/rewrite_pairs.py``'s user pairs)."""
import collections
import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple

BAD_UTF8 = "not valid UTF-8"


def text_lines(path: str) -> Tuple[List[Optional[str]], int]:
    """(the file's lines, decoded one by one as UTF-8 with a leading BOM dropped; None for a line
    that does not decode, number of such lines): one bad line does not lose the file."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = []
    for line in raw.splitlines():
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(None)
    return lines, sum(line is None for line in lines)


RowCheck = Callable[[dict], Tuple[Optional[dict], Optional[str]]]


def read_jsonl(path: str, fields: Sequence[str], check: Optional[RowCheck] = None,
               optional: Sequence[str] = ()) -> Tuple[List[dict], Dict[str, int]]:
    """(rows {field: str}, {reason: count} of the skipped lines) of a JSONL file whose rows need
    every one of ``fields`` as a non-empty string (the row also keeps those of ``optional`` it has, as
    given); ``check(row) -> (row, None) or (None, reason)`` may rewrite or reject a row further.
    Blank lines are ignored."""
    rows, skipped = [], collections.Counter()
    lines, bad = text_lines(path)
    if bad:
        skipped[BAD_UTF8] += bad
    for line in lines:
        if line is None or not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            skipped["invalid JSON"] += 1
            continue
        if not isinstance(obj, dict):
            skipped["not a JSON object"] += 1
            continue
        bad = [f for f in fields if not isinstance(obj.get(f), str) or not obj[f].strip()]
        if bad:
            skipped[f"missing or empty {bad[0]!r}"] += 1
            continue
        row, reason = {f: obj[f] for f in (*fields, *optional) if f in obj}, None
        if check is not None:
            row, reason = check(row)
        if reason:
            skipped[reason] += 1
            continue
        rows.append(row)
    return rows, dict(skipped)
