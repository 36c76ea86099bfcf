"""For every bundled profile, the pure-Python spec equals the meta-device spec, tensor for tensor."""

from __future__ import annotations

import pytest

from vramplan.profiles import bundled_model_names, model_profiles
from vramplan.shapes import spec_from_config
from vramplan.shapes.from_meta import spec_from_meta
from vramplan.shapes.remote import REMOTE_FAMILIES


@pytest.mark.parametrize("name", bundled_model_names())
def test_spec_builders_agree(name):
    p = model_profiles()[name]
    a = spec_from_config(p.config, name=name)
    assert a.params_total == p.params_total, "profile params_total must be the exact count"
    if p.config.get("model_type") in REMOTE_FAMILIES:
        pytest.skip(f"{p.config['model_type']} is remote code: transformers cannot build it on meta "
                    "(counts pinned in tests/shapes/test_remote_families.py)")
    b = spec_from_meta(p.config, name=name)
    if a != b:
        ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
        diff = [(n, ta.get(n), tb.get(n)) for n in sorted(set(ta) | set(tb)) if ta.get(n) != tb.get(n)][:5]
        pytest.fail(f"{name}: builders disagree: {diff}")
