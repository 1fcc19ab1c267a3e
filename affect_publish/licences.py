"""The datasets of the lineage and the terms under which each is distributed.

Every one of them is licensed for (non-commercial or academic) research only, so weights
trained on any of them are published under a non-commercial licence by default.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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


def hub_license(value: str) -> str:
    """The model card's `license:` for `value`: one SPDX licence identifier, lower-cased (cc-by-nc-4.0,
    apache-2.0: the Hub's licence ids are mostly these), or "other". Raises UserError for anything
    else: an expression such as "mit OR apache-2.0" or "(mit)" (the Hub's field holds one licence),
    a LicenseRef- of one's own (use "other"), a name SPDX does not list."""
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
    if value.lower() == "other":
        return "other"
    try:
        canonical = canonicalize_license_expression(value)
    except InvalidLicenseExpression:
        canonical = None
    # one listed licence: not an expression ("mit OR apache-2.0", "(mit)") nor a LicenseRef-
    # of the user's own, for which the Hub has "other"
    if canonical is None or not re.fullmatch(r"[A-Za-z0-9.+-]+", canonical) or canonical.startswith("LicenseRef-"):
        raise UserError(f"--license {value!r}: expected one SPDX licence identifier, e.g. {DEFAULT_LICENSE} (the "
                        "default: the data is for non-commercial research) or apache-2.0, or 'other' for any licence "
                        "SPDX does not list")
    return canonical.lower()

