"""Rebuild the Hugging Face datasets of this folder (run by hand, not by pytest; needs `pip install datasets`):

    python tests/data/real/hf_dataset/build_digits.py

From the UCI optical-recognition handwritten digits that scikit-learn ships (sklearn/datasets/data/digits.csv.gz,
CC BY 4.0, E. Alpaydin and C. Kaynak), 150 real 8×8 digits become PNG images (0..16 → 0..255 as embedsearch's
built-in `digits` source scales them, so the pixels are the same) with a ClassLabel and the index of the digit in
`load_digits()`; per class, in load_digits order, the first 10 are `train`, the next 2 `validation`, the next 3
`test`. Written with the real `datasets` library:

- digits_saved/  DatasetDict.save_to_disk (dataset_dict.json, one Arrow folder per split)
- digits_hub/    the Hub's Parquet layout as push_to_hub writes it (data/SPLIT-00000-of-00001.parquet + README.md)
"""

import shutil
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PER_CLASS = {"train": 10, "validation": 2, "test": 3}


def main() -> None:
    d = load_digits()
    pixels = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    taken: dict[int, int] = {}
    rows: dict[str, list[int]] = {s: [] for s in PER_CLASS}
    for i, t in enumerate(d.target):
        k = taken.get(int(t), 0)
        taken[int(t)] = k + 1
        start = 0
        for split, n in PER_CLASS.items():
            if start <= k < start + n:
                rows[split].append(i)
            start += n
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES), "digits_index": Value("int32")})
    dd = DatasetDict({split: Dataset.from_dict(
        {"image": [PILImage.fromarray(pixels[i], "L") for i in idx], "label": [int(d.target[i]) for i in idx],
         "digits_index": idx}, features=features) for split, idx in rows.items()})
    for name in ("digits_saved", "digits_hub"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    dd.save_to_disk(str(HERE / "digits_saved"))
    (HERE / "digits_hub" / "data").mkdir(parents=True)
    for split, ds in dd.items():
        ds.to_parquet(str(HERE / "digits_hub" / "data" / f"{split}-00000-of-00001.parquet"))
    names = "\n".join(f"          '{i}': {n}" for i, n in enumerate(NAMES))
    splits = "\n".join(f"  - name: {s}\n    num_examples: {len(ds)}" for s, ds in dd.items())
    files = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in dd)
    (HERE / "digits_hub" / "README.md").write_text(f"""---
license: cc-by-4.0
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{names}
  - name: digits_index
    dtype: int32
  splits:
{splits}
configs:
- config_name: default
  data_files:
{files}
---
150 of the UCI optical-recognition handwritten digits (scikit-learn's `load_digits`), CC BY 4.0.
""")


if __name__ == "__main__":
    main()
