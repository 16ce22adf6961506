"""Put a benchmark's table into benchmarks/README.md between its markers, so the README shows what the script measured."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).with_name("README.md")


def write_block(name: str, block: str, readme: Path | None = README) -> bool:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->``; False if the markers are absent."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if readme is None or not readme.exists() or start not in (text := readme.read_text()):
        return False
    readme.write_text(text[:text.index(start)] + f"{start}\n{block}\n{end}" + text[text.index(end) + len(end):])
    return True
