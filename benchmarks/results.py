"""Replace one "## Title" section of benchmarks/RESULTS.md, leaving the others as they are."""
from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n"


def update_section(title: str, body: str, path: Path = RESULTS) -> None:
    text = path.read_text() if path.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text.rstrip("\n") + "\n")
    tmp.replace(path)


def update_subsection(section: str, key: str, text: str, path: Path = RESULTS) -> None:
    """Replace the "### key..." block inside "## section" (create what is missing), keeping the
    section's head and its other blocks; blocks are kept sorted by key."""
    body = path.read_text() if path.exists() else HEADER
    title = f"## {section}"
    if title not in body:
        body = body.rstrip("\n") + f"\n\n{title}\n"
    start = body.index(title) + len(title)
    nxt = body.find("\n## ", start)
    end = len(body) if nxt < 0 else nxt + 1
    blocks = body[start:end].split("\n### ")
    head, subs = blocks[0], {b.split(":", 1)[0].split("\n", 1)[0].strip(): b for b in blocks[1:]}
    subs[key] = text.strip("\n").removeprefix("### ") + "\n"
    new_sec = head.rstrip("\n") + "\n" + "".join("\n### " + subs[k] for k in sorted(subs))
    body = body[:start] + new_sec + ("\n" + body[end:] if end < len(body) else "")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(body)
    tmp.replace(path)
