import json

import pytest

from search_spaces import REFERENCES, ArchConfig, ArchError, BlockConfig, HeadConfig, StemConfig, reference
from search_spaces.codec import block_from_str, block_to_str

MBV2_START = "r224_i3_n1000|stem_c32_k3_s2_relu6|mbv2_k3_e1_c16_s1|mbv2_k3_e6_c24_s2,mbv2_k3_e6_c24_s1|"


@pytest.mark.parametrize("name", list(REFERENCES))
def test_references_round_trip_through_string_and_json(name):
    arch = reference(name)
    assert ArchConfig.from_str(arch.to_str()) == arch
    assert ArchConfig.from_json(arch.to_json()) == arch
    assert ArchConfig.from_str(arch.to_str()).to_str() == arch.to_str()
    assert len(arch.key) == 12 and int(arch.key, 16) >= 0


def test_canonical_string_of_mobilenet_v2():
    text = reference("mobilenet_v2").to_str()
    assert text.startswith(MBV2_START)
    assert text.endswith("|mbv2_k3_e6_c320_s1|head_c1280_relu6")
    assert text.count("mbv2_") == 17


def test_family_writes_only_its_knobs():
    assert block_to_str(BlockConfig("mbv3", 5, 3, 40, 2, 0.25, "relu")) == "mbv3_k5_e3_c40_s2_se0.25_relu"
    assert block_to_str(BlockConfig("mbv3", 3, 2.5, 80, 1, 0.0, "hswish")) == "mbv3_k3_e2.5_c80_s1_hswish"
    assert block_to_str(BlockConfig("effnet", 5, 6, 40, 2)) == "effnet_k5_e6_c40_s2"
    assert block_to_str(BlockConfig("shufflev2", 3, 1, 116, 2)) == "shufflev2_k3_c116_s2"
    assert block_to_str(BlockConfig("fused", 3, 4, 48, 2)) == "fused_k3_e4_c48_s2"


def test_decoder_accepts_any_token_order_and_fixed_knobs_at_their_value():
    assert block_from_str("mbv2_c24_s2_e6_k3") == BlockConfig("mbv2", 3, 6.0, 24, 2)
    assert block_from_str("effnet_k3_e6_c24_s2_se0.25_swish") == BlockConfig("effnet", 3, 6, 24, 2)
    assert BlockConfig("effnet", 3, 6, 24, 2).se == 0.25 and BlockConfig("effnet", 3, 6, 24, 2).act == "swish"


def test_key_depends_on_every_field():
    arch = reference("mobilenet_v2")
    wider = ArchConfig(arch.resolution, arch.in_channels, arch.num_classes, StemConfig(40, 3, 2, "relu6"),
                       arch.stages, arch.head)
    other_classes = ArchConfig(arch.resolution, arch.in_channels, 10, arch.stem, arch.stages, arch.head)
    assert len({arch.key, wider.key, other_classes.key}) == 3


def test_canonical_json_is_sorted_and_complete():
    data = json.loads(reference("efficientnet_b0").to_json())
    assert list(data) == sorted(data)
    assert data["stages"][1][0] == {"act": "swish", "expand": 6.0, "family": "effnet", "kernel": 3,
                                    "out_channels": 24, "se": 0.25, "stride": 2}


VALID = "r32_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e4_c24_s2|head_c64_relu"


@pytest.mark.parametrize("text, expected", [
    ("", "segment"),
    ("r32_i1_n10|stem_c16_k3_s2_relu|head_c64_relu", "3 '|'-separated segment"),
    (VALID.replace("mbv2", "mbv9"), "unknown block family 'mbv9'; known families: mbv2, mbv3, effnet, fused"),
    (VALID.replace("_k3_e4", "_k4_e4"), "kernel of a mbv2 block is 4, which is not allowed; allowed: 3, 5, 7"),
    (VALID.replace("_s2|head", "_s3|head"), "stride of a mbv2 block is 3, which is not allowed; allowed: 1, 2"),
    (VALID.replace("mbv2_k3_e4_c24", "shufflev2_k3_c23"), "must be even"),
    (VALID.replace("mbv2_k3_e4_c24", "shufflev2_k3_e4_c24"), "cannot read token 'e4'"),
    (VALID.replace("_e4", ""), "missing e (expand ratio)"),
    (VALID.replace("_e4", "_e0.5"), "expand ratio of a mbv2 block 0.5 is out of range; allowed: 1 to 8"),
    (VALID.replace("_e4", "_e3.6667"), "more than 3 decimals"),
    (VALID.replace("_e4", "_e4_k5"), "token 'k' is given twice"),
    (VALID.replace("mbv2_k3_e4_c24_s2", "mbv3_k3_e4_c24_s2"), "needs an activation; allowed: relu, hswish"),
    (VALID.replace("mbv2_k3_e4_c24_s2", "mbv2_k3_e4_c24_s2_se0.25"), "SE ratio of a mbv2 block is 0.25"),
    (VALID.replace("mbv2_k3_e4_c24_s2", "mbv2_k3_e4_c24_s2_hswish"), "activation of a mbv2 block is 'hswish'"),
    (VALID.replace("|stem_c16", "|stm_c16"), "the second segment is the stem"),
    (VALID.replace("head_c64", "head_c0"), "head channels 0 is out of range; allowed: 1 to 8192"),
    (VALID.replace("r32", "x32"), "starts with r<resolution>"),
    (VALID.replace("_i1", ""), "missing i (input channels)"),
    (VALID.replace("mbv2_k3_e4_c24_s2", "mbv2_k3_e4_c24_s2,"), "stage 0 block 1"),
    (VALID.replace("|head", "||head"), "stage 1 is empty"),
    (VALID.replace("_relu|mbv2", "_gelu|mbv2"), "cannot read token 'gelu'"),
])
def test_malformed_strings_name_what_is_wrong(text, expected):
    with pytest.raises(ArchError) as err:
        ArchConfig.from_str(text)
    assert expected in str(err.value)


@pytest.mark.parametrize("text, expected", [
    ("{", "not valid JSON"),
    ("[]", "architecture must be a JSON object"),
    (json.dumps({"resolution": 32}), "missing field(s) in_channels"),
    ('{"resolution": 32, "in_channels": 1, "num_classes": 10, "stem": {"channels": 8}, "stages": [[{"family": '
     '"mbv2", "kernel": 3, "out_channels": 8, "stride": 1, "colour": 1}]], "head": {"channels": 8}}',
     "stage 0 block 0: unknown field(s) colour"),
    ('{"resolution": "32", "in_channels": 1, "num_classes": 10, "stem": {"channels": 8}, "stages": [[{"family": '
     '"mbv2", "kernel": 3, "out_channels": 8, "stride": 1}]], "head": {"channels": 8}}',
     "resolution must be a whole number"),
])
def test_malformed_json_names_what_is_wrong(text, expected):
    with pytest.raises(ArchError) as err:
        ArchConfig.from_json(text)
    assert expected in str(err.value)


def test_json_with_defaults_decodes_and_becomes_canonical():
    text = ('{"resolution": 32, "in_channels": 1, "num_classes": 10, "stem": {"channels": 8}, "stages": [[{"family":'
            ' "mbv2", "kernel": 3, "out_channels": 8, "stride": 1}]], "head": {"channels": 8}}')
    arch = ArchConfig.from_json(text)
    assert arch.to_str() == "r32_i1_n10|stem_c8_k3_s2_relu|mbv2_k3_e1_c8_s1|head_c8_relu"


def test_objects_are_frozen_and_validated():
    block = BlockConfig("mbv2", 3, 6, 24, 2)
    with pytest.raises(AttributeError):
        block.kernel = 5
    with pytest.raises(ArchError, match="stage 0 is empty"):
        ArchConfig(32, 1, 10, StemConfig(8), ((),), HeadConfig(8))
    with pytest.raises(ArchError, match="must be a whole number"):
        BlockConfig("mbv2", 3, 6, True, 2)


# ------------------------------------------------------------------------------------ explicit widths


@pytest.mark.parametrize("text, block", [
    ("mbv2_k3_e6_m37_c24_s1", BlockConfig("mbv2", 3, 6, 24, 1, mid=37)),
    ("mbv3_k5_e4_m70_c40_s1_se0.25_q16_hswish_noskip",
     BlockConfig("mbv3", 5, 4, 40, 1, 0.25, "hswish", mid=70, squeeze=16, noskip=True)),
    ("shufflev2_k3_m20_b20_c48_s2", BlockConfig("shufflev2", 3, 1, 48, 2, mid=20, branch=20)),
    ("effnet_k3_e6_c24_s1_q5_noskip", BlockConfig("effnet", 3, 6, 24, 1, squeeze=5, noskip=True)),
    ("fused_k3_e4_m50_c48_s2", BlockConfig("fused", 3, 4, 48, 2, mid=50)),
])
def test_explicit_width_tokens_have_one_canonical_order(text, block):
    assert block_to_str(block) == text
    assert block_from_str(text) == block
    shuffled = "_".join([text.split("_")[0]] + text.split("_")[1:][::-1])
    assert block_from_str(shuffled) == block


def test_explicit_widths_change_string_json_and_key_but_on_grid_json_is_unchanged():
    grid = ArchConfig.from_str("r28_i1_n10|stem_c16_k3_s2_relu6|mbv2_k3_e2_c24_s1|head_c128_relu6")
    pruned = ArchConfig.from_str("r28_i1_n10|stem_c16_k3_s2_relu6|mbv2_k3_e2_m37_c24_s1|head_c128_relu6")
    assert json.loads(grid.to_json())["stages"][0][0] == {"act": "relu6", "expand": 2.0, "family": "mbv2",
                                                          "kernel": 3, "out_channels": 24, "se": 0.0, "stride": 1}
    assert json.loads(pruned.to_json())["stages"][0][0]["mid"] == 37
    assert pruned.key != grid.key
    assert ArchConfig.from_json(pruned.to_json()) == pruned
    assert pruned.stages[0][0].on_grid() == grid.stages[0][0]


def test_json_accepts_explicit_widths_null_or_false():
    data = json.loads(VALID_JSON)
    data["stages"][0][0].update({"mid": None, "squeeze": None, "branch": None, "noskip": False})
    assert ArchConfig.from_dict(data).to_json() == ArchConfig.from_json(VALID_JSON).to_json()
    data["stages"][0][0]["noskip"] = None
    assert ArchConfig.from_dict(data).stages[0][0].noskip is False
    data["stages"][0][0].update({"mid": 20, "noskip": True})
    assert ArchConfig.from_dict(data).stages[0][0] == BlockConfig("mbv2", 3, 4, 8, 1, mid=20, noskip=True)


VALID_JSON = ('{"resolution": 32, "in_channels": 1, "num_classes": 10, "stem": {"channels": 8}, "stages": '
              '[[{"family": "mbv2", "kernel": 3, "expand": 4, "out_channels": 8, "stride": 1}]], '
              '"head": {"channels": 8}}')


@pytest.mark.parametrize("field, value, expected", [
    ("mid", [], "middle channels (m) of a mbv2 block must be a whole number"),
    ("mid", True, "middle channels (m) of a mbv2 block must be a whole number"),
    ("mid", 0, "middle channels (m) of a mbv2 block 0 is out of range"),
    ("squeeze", {}, "SE squeeze channels (q) of a mbv2 block must be a whole number"),
    ("branch", "x", "branch channels (bx) belong to ShuffleNet units"),
    ("noskip", [], "noskip of a mbv2 block must be true or false"),
    ("noskip", 1, "noskip of a mbv2 block must be true or false"),
    ("family", [], "family must be text"),
])
def test_bad_explicit_json_fields_are_arch_errors(field, value, expected):
    data = json.loads(VALID_JSON)
    data["stages"][0][0][field] = value
    with pytest.raises(ArchError) as err:
        ArchConfig.from_dict(data)
    assert f"stage 0 block 0: {expected}" in str(err.value)


@pytest.mark.parametrize("text, expected", [
    (VALID.replace("_e4_c24", "_e4_m0_c24"), "middle channels (m) of a mbv2 block 0 is out of range"),
    (VALID.replace("_e4_c24", "_e1_m30_c24"), "need an expansion layer"),
    (VALID.replace("_c24_s2", "_c24_s2_q4"), "SE squeeze channels (q4) need an SE module"),
    (VALID.replace("_c24_s2", "_c24_s2_b8"), "branch channels (b8) belong to ShuffleNet units"),
    (VALID.replace("mbv2_k3_e4_c24_s2", "shufflev2_k3_c24_s2_noskip"), "noskip is not allowed there"),
    (VALID.replace("mbv2_k3_e4_c24_s2", "shufflev2_k3_b24_c24_s2"), "branch channels (b) of a shufflev2 unit 24"),
    (VALID.replace("mbv2_k3_e4_c24_s2", "shufflev2_k3_b10_c16_s1"), "its branch is 8 channels; got b10"),
    (VALID.replace("_c24_s2", "_c24_s2_noskipp"), "cannot read token 'noskipp'"),
    (VALID.replace("_c24_s2", "_c24_s2_noskip_noskip"), "token 'noskip' is given twice"),
    (VALID.replace("_e4_c24", "_e4_m1.5_c24"), "cannot read token 'm1.5'"),
])
def test_malformed_explicit_tokens_name_what_is_wrong(text, expected):
    with pytest.raises(ArchError) as err:
        ArchConfig.from_str(text)
    assert expected in str(err.value)


@pytest.mark.parametrize(("redundant", "canonical"), [
    # m96 = make_divisible(16 x 6, 8); noskip where stride 2 gives no residual anyway
    ("mbv2_k3_e6_m96_c24_s2_noskip", "mbv2_k3_e6_c24_s2"),
    # m64 = 16 x 4 (the stem gives 16 channels); q16 = the rule's squeeze of 64 middle channels at 0.25
    ("mbv3_k3_e4_m64_c24_s1_se0.25_q16_relu", "mbv3_k3_e4_c24_s1_se0.25_relu"),
    # b12 = half of 24, m12 = the branch width
    ("shufflev2_k3_m12_b12_c24_s2", "shufflev2_k3_c24_s2"),
    # not redundant: a narrower middle stays, and so does its noskip on a residual block
    ("mbv2_k3_e6_m90_c24_s2", "mbv2_k3_e6_m90_c24_s2"),
])
def test_explicit_tokens_that_restate_the_rule_are_dropped(redundant, canonical):
    def arch(block):
        return ArchConfig.from_str(f"r32_i1_n10|stem_c16_k3_s2_relu|{block}|head_c64_relu")

    got, want = arch(redundant), arch(canonical)
    assert got == want and got.key == want.key and got.to_str() == want.to_str()
    assert got.explicit == ("_m" in canonical)
    residual = arch("mbv2_k3_e6_c24_s2,mbv2_k3_e6_c24_s1_noskip")
    assert residual.stages[0][1].noskip and residual.explicit  # a real residual dropped: kept
