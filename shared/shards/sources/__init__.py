"""Readers of the published raw layouts, one module per dataset.

Each module offers `scan(root, ...) -> Scan`: it parses the dataset's list files exactly as
published, turns every usable row into an `Item` and every unusable one into a `Reject`. A
missing or malformed list file is a `UserError`; a bad row is a reject, never a crash.
"""
from . import affectnet, casia, celeba, imdb_wiki

SOURCES = {
    "affectnet": affectnet,
    "casia-webface": casia,
    "celeba": celeba,
    "imdb-wiki": imdb_wiki,
}
