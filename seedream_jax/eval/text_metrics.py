"""Text-rendering metrics with Seedream 2.0's definitions, on OCR output.

For a target text of N characters and the text read from the image:
  text accuracy      Ra = max(0, 1 - edit_distance(read, target) / N)   (Levenshtein, per character)
  hit rate           Rh = correctly rendered characters / N             (longest common subsequence)
  availability (exact) = 1 if read == target else 0
Both strings are normalised first (``normalise``): Unicode NFKC (full-width Latin becomes ASCII),
upper case, no whitespace, and none of the symbols the OCR reads the synthetic world's shapes as
(a star is read as '★', a square as '■'), which no target word contains.

Which OCR lines are "the text read": of every run of consecutive lines (in reading order) the one
closest to the target in edit distance (``best_reading``), so a word split over two boxes counts
whole and unrelated lines (a shape read as 'O') do not count against it.
"""
import unicodedata
from typing import Dict, Sequence

# What PP-OCR reads the world's circles, squares, triangles and stars as, when it reads them.
SHAPE_GLYPHS = frozenset("★☆■□▲△▼▽◆◇●○•·")


def normalise(text: str) -> str:
    """NFKC, upper case, whitespace and shape glyphs removed."""
    text = unicodedata.normalize("NFKC", text).upper()
    return "".join(ch for ch in text if not ch.isspace() and ch not in SHAPE_GLYPHS)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of one character each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def common_characters(a: str, b: str) -> int:
    """Length of the longest common subsequence of ``a`` and ``b``: characters rendered right, in order."""
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ca == cb else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def best_reading(lines: Sequence[str], target: str) -> str:
    """The normalised concatenation of consecutive ``lines`` closest to ``target`` in edit
    distance (ties: the shorter); '' when no line is closer than nothing."""
    target = normalise(target)
    lines = [normalise(s) for s in lines]
    best, best_key = "", (len(target), 0)
    for i in range(len(lines)):
        for j in range(i + 1, len(lines) + 1):
            reading = "".join(lines[i:j])
            key = (edit_distance(reading, target), len(reading))
            if key < best_key:
                best, best_key = reading, key
    return best


def text_scores(read: str, target: str) -> Dict[str, float]:
    """{'ra', 'rh', 'exact'} of the text ``read`` against ``target`` (both normalised here)."""
    read, target = normalise(read), normalise(target)
    if not target:
        raise ValueError("text_scores: empty target text")
    n = len(target)
    return {"ra": max(0.0, 1.0 - edit_distance(read, target) / n),
            "rh": common_characters(read, target) / n,
            "exact": float(read == target)}
