"""Synthetic face pictures and tiny raw datasets in the published layouts, for offline tests.

`faces` draws face-like pictures with checkable properties; `layouts` writes AffectNet,
CASIA-WebFace (folders and RecordIO), CelebA and IMDB-WIKI with their real quirks.
"""

from shared.synthetic.faces import (
    draw_background, draw_face, face_jpeg, jpeg_bytes, landmarks_5, landmarks_68, random_skin,
)
from shared.synthetic.layouts import (
    REJECT_REASONS, Planted, matlab_datenum, write_affectnet, write_all, write_casia_folders,
    write_casia_recordio, write_celeba, write_imdb_wiki,
)

__all__ = ["Planted", "REJECT_REASONS", "draw_background", "draw_face", "face_jpeg",
           "jpeg_bytes", "landmarks_5", "landmarks_68", "matlab_datenum", "random_skin",
           "write_affectnet", "write_all", "write_casia_folders", "write_casia_recordio",
           "write_celeba", "write_imdb_wiki"]
