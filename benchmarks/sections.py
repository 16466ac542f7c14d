"""BENCHMARKS.md is written by the benchmarks, each into its own marked section."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(name: str, section: str, path: Path = BENCHMARKS) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` with
    `section` (appended at the end the first time), and print it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section}{end}"
    if start in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(section)
