"""Writers of tiny raw datasets in the published on-disk layouts, one module per dataset.

Each writer returns a `Planted` record of what it wrote, so converter tests can derive their
expectations (rows, accepted images, rejects by reason, boxes and labels) without re-parsing.
"""

from __future__ import annotations

from pathlib import Path

from shared.synthetic.layouts.affectnet import write_affectnet
from shared.synthetic.layouts.casia import write_casia_folders, write_casia_recordio
from shared.synthetic.layouts.celeba import write_celeba
from shared.synthetic.layouts.common import REJECT_REASONS, Planted
from shared.synthetic.layouts.imdb_wiki import matlab_datenum, write_imdb_wiki

__all__ = ["Planted", "REJECT_REASONS", "matlab_datenum", "write_affectnet", "write_all",
           "write_casia_folders", "write_casia_recordio", "write_celeba", "write_imdb_wiki"]


def write_all(root: Path, seed: int = 0) -> dict[str, Planted]:
    """Write every layout with default sizes into its own sub-folder of `root`.

    Keys of the result are the sub-folder names: affectnet, casia, casia_rec, celeba,
    imdb_wiki.
    """
    root = Path(root)
    return {
        "affectnet": write_affectnet(root / "affectnet", seed),
        "casia": write_casia_folders(root / "casia", seed),
        "casia_rec": write_casia_recordio(root / "casia_rec", seed),
        "celeba": write_celeba(root / "celeba", seed),
        "imdb_wiki": write_imdb_wiki(root / "imdb_wiki", seed),
    }
