"""The datasets of the lineage and the terms under which each is distributed.

Every one of them is licensed for (non-commercial or academic) research only, so weights
trained on any of them are published under a non-commercial licence by default.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UserError

DEFAULT_LICENSE = "cc-by-nc-4.0"


@dataclass(frozen=True)
class Dataset:
    key: str  # the card's `datasets:` entry
    name: str
    url: str
    terms: str


DATASETS = {d.key: d for d in (
    Dataset("affectnet", "AffectNet", "http://mohammadmahoor.com/affectnet/",
            "academic research licence agreement: research use only, no commercial use, "
            "no redistribution of the images"),
    Dataset("casia-webface", "CASIA-WebFace", "http://www.cbsr.ia.ac.cn/english/CASIA-WebFace-Database.html",
            "non-commercial research use only"),
    Dataset("celeba", "CelebA", "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
            "non-commercial research use only"),
    Dataset("imdb-wiki", "IMDB-WIKI", "https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/",
            "academic research use only"),
    Dataset("hume-reaction", "Hume-Reaction (ABAW5 / MuSe 2022)", "https://www.muse-challenge.org/",
            "the challenge's end-user licence agreement: research use only"),
    Dataset("hume-vidmimic2", "Hume-Vidmimic2 (ABAW6-10 EMI)", "https://affective-behavior-analysis-in-the-wild.github.io/",
            "the challenge's end-user licence agreement: research use only"),
)}


HUB_LICENSES_FILE = Path(__file__).with_name("hub_licenses.txt")


def hub_licenses() -> list[str]:
    """The licence identifiers the Hub's cards take (hub_licenses.txt, from the Hub's documentation)."""
    lines = HUB_LICENSES_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def hub_license(value: str) -> str:
    """The model card's `license:` for `value`: one of the Hub's licence identifiers, compared
    without case (cc-by-nc-4.0, apache-2.0, other, ...). Raises UserError for anything else; a
    licence the Hub does not list is `other` (then name it in the card and add its text)."""
    known = hub_licenses()
    if value.strip().lower() in known:
        return value.strip().lower()
    near = difflib.get_close_matches(value.strip().lower(), known, n=3)
    raise UserError(f"--license {value!r}: not a licence identifier the Hub lists"
                    + (f" (did you mean {', '.join(near)}?)" if near else "")
                    + f"; e.g. {DEFAULT_LICENSE} (the default: the data is for non-commercial research), apache-2.0, "
                    "or other for a licence it does not list (affect_publish/hub_licenses.txt)")
