"""Property tests: valid architectures round-trip; no string crashes the decoder."""

import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from latency_tables import LutKey, analytic_cost, arch_keys
from search_spaces import (
    ACTIVATIONS,
    FAMILIES,
    ArchConfig,
    ArchError,
    BlockConfig,
    HeadConfig,
    StemConfig,
    get_family,
)


@st.composite
def blocks(draw, explicit=False):
    fam = FAMILIES[draw(st.sampled_from(sorted(FAMILIES)))]
    expand = draw(st.integers(1000, 8000)) / 1000 if fam.has_expand else 1.0
    channels = draw(st.integers(1, 256)) * (2 if fam.even_channels else 1)
    se = draw(st.sampled_from(fam.se_ratios))
    widths = draw(explicit_widths(fam, expand, channels, se)) if explicit else {}
    return BlockConfig(fam.name, draw(st.sampled_from(fam.kernels)), expand, channels,
                       draw(st.sampled_from(fam.strides)), se, draw(st.sampled_from(fam.activations)), **widths)


@st.composite
def explicit_widths(draw, fam, expand, channels, se):
    """Any explicit widths the block can state: m where it has a middle width, q with SE, b in ShuffleNet units,
    noskip outside them."""
    shuffle = fam.kind == "shuffle"
    widths = {}
    if (shuffle or expand != 1.0) and draw(st.booleans()):
        widths["mid"] = draw(st.integers(1, 512))
    if se > 0 and draw(st.booleans()):
        widths["squeeze"] = draw(st.integers(1, 128))
    if shuffle and channels > 2 and draw(st.booleans()):
        widths["branch"] = draw(st.integers(1, channels - 1))
    if not shuffle:
        widths["noskip"] = draw(st.booleans())
    return widths


def _split_units_keep_half(stages, stem_channels):
    """A split ShuffleNet unit's branch is half its output: drop a drawn branch width that says otherwise."""
    channels, out = stem_channels, []
    for stage in stages:
        fixed = []
        for block in stage:
            if block.branch is not None and block.is_split_unit(channels) and block.branch != channels // 2:
                block = replace(block, branch=None)
            fixed.append(block)
            channels = block.out_channels
        out.append(tuple(fixed))
    return tuple(out)


@st.composite
def archs(draw, explicit=False):
    stem = StemConfig(draw(st.integers(1, 64)), draw(st.sampled_from((1, 3, 5, 7))), draw(st.sampled_from((1, 2))),
                      draw(st.sampled_from(ACTIVATIONS)), draw(st.booleans()))
    stages = draw(st.lists(st.lists(blocks(explicit), min_size=1, max_size=4), min_size=1, max_size=5))
    head = HeadConfig(draw(st.integers(1, 2048)), draw(st.integers(0, 2048)), draw(st.sampled_from(ACTIVATIONS)))
    return ArchConfig(draw(st.integers(1, 512)), draw(st.integers(1, 4)), draw(st.integers(1, 1000)), stem,
                      _split_units_keep_half(stages, stem.channels), head)


@settings(max_examples=300, deadline=None)
@given(archs())
def test_valid_architectures_round_trip(arch):
    text = arch.to_str()
    assert ArchConfig.from_str(text) == arch
    assert ArchConfig.from_str(text).to_str() == text
    assert ArchConfig.from_json(arch.to_json()) == arch
    assert ArchConfig.from_json(json.dumps(json.loads(arch.to_json()), indent=1)).key == arch.key


ALPHABET = "|,_.0123456789rinstemhadckfpuwxbvlgEe- "


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=120) | st.text(max_size=60))
def test_random_strings_never_crash_the_decoder(text):
    try:
        ArchConfig.from_str(text)
    except ArchError as err:
        assert str(err)


@settings(max_examples=400, deadline=None)
@given(archs(), st.data())
def test_edited_valid_strings_decode_or_fail_cleanly(arch, data):
    text = arch.to_str()
    i = data.draw(st.integers(0, len(text) - 1))
    edited = text[:i] + data.draw(st.sampled_from(list(ALPHABET) + [""])) + text[i + 1:]
    try:
        ArchConfig.from_str(edited)
    except ArchError as err:
        assert str(err)


@settings(max_examples=300, deadline=None)
@given(archs(explicit=True))
def test_architectures_with_explicit_widths_round_trip(arch):
    text = arch.to_str()
    assert ArchConfig.from_str(text) == arch and ArchConfig.from_str(text).to_str() == text
    assert ArchConfig.from_json(arch.to_json()) == arch
    assert ArchConfig.from_json(json.dumps(json.loads(arch.to_json()), indent=1)).key == arch.key
    grid = arch.on_grid()
    assert (arch.key != grid.key) == arch.explicit
    blocks_json = [b for stage in json.loads(grid.to_json())["stages"] for b in stage]
    assert not any({"mid", "squeeze", "branch", "noskip"} & set(b) for b in blocks_json)
    for key, site in zip(arch_keys(arch)[1:-1], arch.sites(), strict=True):
        assert LutKey.from_row({k: str(v) for k, v in key.to_row().items()}) == key
        assert key.block_config() == site.block


JSON_VALUES = st.none() | st.booleans() | st.integers(-3, 600) | st.floats(allow_nan=True) | st.text(max_size=4) \
    | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)


@settings(max_examples=300, deadline=None)
@given(archs(), st.data())
def test_any_json_value_in_a_block_field_decodes_or_is_an_arch_error(arch, data):
    doc = json.loads(arch.to_json())
    block = data.draw(st.sampled_from([b for stage in doc["stages"] for b in stage]))
    field = data.draw(st.sampled_from(["mid", "squeeze", "branch", "noskip", "family", "kernel", "out_channels",
                                       "stride", "expand", "se", "act"]))
    block[field] = data.draw(JSON_VALUES)
    try:
        ArchConfig.from_dict(doc)
    except ArchError as err:
        assert str(err)


def _small(arch):
    """The same network at a small resolution and head, so that tracing stays fast."""
    return replace(arch, resolution=min(arch.resolution, 32), head=HeadConfig(min(arch.head.channels, 64)))


@settings(max_examples=150, deadline=None)
@given(archs(explicit=True), st.data())
def test_analytic_costs_of_explicit_widths_are_positive_and_grow_with_the_middle_width(arch, data):
    arch = _small(arch)
    cost = analytic_cost(arch)
    assert cost.params > 0 and cost.macs > 0 and cost.memory_access > 0 and cost.peak_activation > 0
    sites = [site for site in arch.sites()
             if get_family(site.block.family).kind == "shuffle" or site.block.expand != 1.0]
    if not sites:
        return
    site = data.draw(st.sampled_from(sites))
    mid = site.block.mid_channels(site.in_channels)
    wider = [list(stage) for stage in arch.stages]
    wider[site.stage][site.position] = replace(site.block, mid=mid + data.draw(st.integers(1, 16)))
    bigger = analytic_cost(replace(arch, stages=tuple(tuple(stage) for stage in wider)))
    assert bigger.params > cost.params and bigger.macs > cost.macs
    assert bigger.memory_access > cost.memory_access
