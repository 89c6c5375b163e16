#!/usr/bin/env python3
"""Put the airlock tables of scripts/bench.sh's summaries into README.md.

    scripts/bench-readme.py [README] [SUMMARY_DIR]

Each summary (SUMMARY_DIR/s1/summary.md, s5/summary.md; default target/bench)
replaces the table under the README heading that names its scale and the
command it came from ("Scale 5 (...), `scripts/bench.sh 5 3`:"), which is
rewritten with the run count the summary states. Nothing else changes.
"""
import pathlib
import re
import sys

readme = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
results = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "target/bench")
text = readme.read_text()
changed = []
for summary in sorted(results.glob("s*/summary.md")):
    scale = summary.parent.name[1:]
    body = summary.read_text()
    runs = re.search(r"medians of (\d+) runs", body)
    start = body.find("| work | airlock s |")
    if start < 0 or not runs:
        continue
    table = "\n".join(l for l in body[start:].splitlines() if l.startswith("|"))
    heading = re.compile(
        r"(Scale %s \([^)]*\), `scripts/bench\.sh %s )\d+(`:\n\n)(?:\|.*\n)+" % (scale, scale)
    )
    text, n = heading.subn(lambda m: f"{m.group(1)}{runs.group(1)}{m.group(2)}{table}\n", text)
    if n:
        changed.append(f"scale {scale} ({runs.group(1)} runs)")
readme.write_text(text)
print("README tables updated: " + (", ".join(changed) if changed else "none"))
