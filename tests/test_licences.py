"""affect-publish's --license: what a card's `license:` may say (affect_publish/licences.py)."""
from __future__ import annotations

import pytest

from affect_publish.licences import hub_license
from shared.errors import UserError


@pytest.mark.parametrize("given, written", [("CC-BY-NC-4.0", "cc-by-nc-4.0"), ("Other", "other"), ("(MIT)", None),
                                            ("LicenseRef-mine", None), ("cc-by-nc", None), ("", None)])
def test_the_licence_is_one_spdx_identifier_or_other(given, written):
    if written is None:
        with pytest.raises(UserError, match="expected one SPDX licence identifier"):
            hub_license(given)
    else:
        assert hub_license(given) == written
