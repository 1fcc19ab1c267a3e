"""affect-publish's --license: what a card's `license:` may say (affect_publish/licences.py)."""
from __future__ import annotations

import pytest

from affect_publish.licences import hub_license, hub_licenses
from shared.errors import UserError


@pytest.mark.parametrize("given, written", [("CC-BY-NC-4.0", "cc-by-nc-4.0"), ("Other", "other"), ("openrail", "openrail"),
                                            ("(MIT)", None), ("GPL-3.0-only", None), ("EUPL-1.2", None),
                                            ("cc-by-nc", None), ("", None)])
def test_the_licence_is_one_the_hub_lists(given, written):
    """The Hub's list, not SPDX: it refuses a card with eupl-1.2 or gpl-3.0-only (valid SPDX ids)."""
    if written is None:
        with pytest.raises(UserError, match="not a licence identifier the Hub lists"):
            hub_license(given)
    else:
        assert hub_license(given) == written


def test_the_list_is_the_hubs_documented_one():
    known = hub_licenses()
    assert len(known) == len(set(known)) == 69 and known[:2] == ["apache-2.0", "mit"] and known[-1] == "other"
    assert all(k == k.lower() and " " not in k for k in known)
    assert {"cc-by-nc-4.0", "cc-by-nc-sa-4.0", "llama2", "unknown"} <= set(known)
