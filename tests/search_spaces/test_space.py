import itertools

import numpy as np
import pytest

from search_spaces import (
    SPACES,
    ArchConfig,
    HeadConfig,
    SearchSpace,
    SpaceError,
    StageSpec,
    StemConfig,
    get_space,
    reference,
)


def tiny_space() -> SearchSpace:
    return SearchSpace(
        "tiny", (16, 20), 1, 10, StemConfig(8, 3, 2, "relu"),
        (StageSpec(("mbv2", "shufflev2"), (8, 12), (1, 2), 1, (3, 5), (2.0, 3.0)),
         StageSpec(("mbv3", "fused"), (16,), (1, 2), 2, (3,), (2.0, 4.0), act="hswish", se=0.25)),
        HeadConfig(32, 0, "relu"),
    )


def test_size_equals_the_number_of_distinct_architectures():
    space = tiny_space()
    every = itertools.product(*(range(n) for n in space.gene_sizes))
    strings = {space.from_genes(space.canonical_genes(np.array(g))[0]).to_str() for g in every}
    # stage 0: 2 widths x (mbv2: 4 + 16, shufflev2: 2 + 4) = 52; stage 1: (mbv3: 2 + 4, fused: 2 + 4) = 12; x 2 res
    assert space.size() == 2 * 52 * 12 == len(strings)


@pytest.mark.parametrize("name", list(SPACES))
def test_samples_are_valid_members_and_seeded(name):
    space = get_space(name)
    first = [space.sample(np.random.default_rng(7)).to_str() for _ in range(2)]
    assert first[0] == first[1]
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(50)]
    assert len({a.key for a in archs}) == 50
    for a in archs:
        assert space.validate(a) is a
        genes = space.to_genes(a)
        assert space.from_genes(genes) == a
        assert np.array_equal(space.canonical_genes(genes)[0], genes)


def test_named_spaces_mix_all_five_families_and_have_the_issue_ranges():
    small, imagenet = get_space("small"), get_space("imagenet")
    families = {f for st in small.stages for f in st.families}
    assert families == {"mbv2", "mbv3", "effnet", "fused", "shufflev2"}
    assert min(small.resolutions) >= 24 and max(small.resolutions) <= 32 and small.in_channels == 1
    assert imagenet.resolutions == (160, 176, 192, 208, 224)
    elastic = imagenet.stages[1:]
    assert all(st.kernels == (3, 5, 7) and st.expands == (3, 4, 6) and st.depths == (2, 3, 4) for st in elastic)
    assert {f for st in imagenet.stages for f in st.families} == {"mbv2", "mbv3", "effnet", "fused", "shufflev2"}
    assert get_space("small", in_channels=3, num_classes=100).sample(np.random.default_rng(0)).num_classes == 100


def test_mutation_and_crossover_stay_in_the_space_and_repeat_with_the_seed():
    space = get_space("imagenet")
    a, b = space.sample(np.random.default_rng(1)), space.sample(np.random.default_rng(2))

    def run(seed):
        rng = np.random.default_rng(seed)
        return [space.mutate(a, rng, 0.3).to_str() for _ in range(5)] + [space.crossover(a, b, rng).to_str()]

    first, again = run(3), run(3)
    assert first == again
    for text in first:
        space.validate(ArchConfig.from_str(text))
    assert space.mutate(a, np.random.default_rng(0), 0.0) == a
    assert sum(m != a.to_str() for m in first[:5]) >= 4
    genes = [space.to_genes(ArchConfig.from_str(t)) for t in first[5:]]
    ga, gb = space.to_genes(a), space.to_genes(b)
    either_uses = space.active_mask(ga)[0] | space.active_mask(gb)[0]
    for g in genes:  # every gene the child uses comes from a parent that used it, or neither parent had it
        assert (((g == ga) | (g == gb)) | ~space.active_mask(g)[0] | ~either_uses).all()


def test_mutation_rate_matches_p():
    space, rng = get_space("small"), np.random.default_rng(0)
    arch = space.sample(rng)
    changed = np.mean([space.mutate(arch, rng, 0.05) != arch for _ in range(400)])
    # 35 genes, p = 0.05, ~2/3 of resamples pick a new value: P(any change) is about 1 - (1 - 0.033)^35 ~ 0.69
    assert 0.5 < changed < 0.85


def test_encoding_is_one_hot_per_active_gene():
    space = get_space("small")
    rng = np.random.default_rng(0)
    genes = space.sample_genes(rng, 200)
    x = space.encode_genes(genes)
    assert x.shape == (200, space.encoding_length) and x.dtype == np.float32
    assert np.array_equal(x.sum(1), space.active_mask(genes).sum(1))
    arch = space.from_genes(genes[0])
    assert np.array_equal(space.encode(arch), x[0])


def test_validate_names_the_field_the_value_and_the_choices():
    space = get_space("imagenet")
    arch = space.sample(np.random.default_rng(0))
    cases = [
        (ArchConfig(200, 3, 1000, arch.stem, arch.stages, arch.head), "resolution 200 is outside the space; "
                                                                      "allowed: 160, 176, 192, 208, 224"),
        (reference("mobilenet_v3_large"), "number of stages is 5 but space 'imagenet' has 6"),
        (ArchConfig(224, 3, 10, arch.stem, arch.stages, arch.head), "number of classes is 10"),
        (ArchConfig.from_str(arch.to_str().replace("head_c960", "head_c640")), "head is"),
    ]
    for bad, expected in cases:
        with pytest.raises(SpaceError) as err:
            space.validate(bad)
        assert expected in str(err.value)
    text = arch.to_str().split("|")
    text[3] = "mbv3_k3_e5_c16_s2_relu,mbv3_k3_e3_c16_s1_relu"
    with pytest.raises(SpaceError, match=r"stage 1 block 0 expand ratio 5.0 is outside the space; allowed: 3, 4, 6"):
        space.validate(ArchConfig.from_str("|".join(text)))
    text[3] = "mbv3_k3_e3_c16_s2_relu,mbv3_k3_e3_c16_s2_relu"
    with pytest.raises(SpaceError, match="stage 1 block 1 is stride=2 but this stage needs stride=1"):
        space.validate(ArchConfig.from_str("|".join(text)))
    text[3] = "mbv3_k3_e3_c16_s2_relu,mbv3_k3_e3_c24_s1_relu"
    with pytest.raises(SpaceError, match="stage 1 block 1 is out_channels=24 but this stage needs out_channels=16"):
        space.validate(ArchConfig.from_str("|".join(text)))


def test_genes_out_of_range_and_bad_spaces_are_errors():
    space = get_space("small")
    genes = space.gene_sizes.copy()
    with pytest.raises(SpaceError, match=r"gene resolution = 3 is out of range; allowed: 0 to 2"):
        space.from_genes(genes)
    with pytest.raises(SpaceError, match="unknown search space 'big'; known spaces: small, imagenet"):
        get_space("big")
    with pytest.raises(SpaceError, match="must be even"):
        StageSpec(("shufflev2",), (15,), (1,), 2)
    with pytest.raises(SpaceError, match="repeats a choice"):
        StageSpec(("mbv2",), (16, 16), (1,), 2)


def test_explicit_widths_are_off_the_grid_and_validate_parent_checks_the_grid_network():
    space = tiny_space()
    grid = ArchConfig.from_str("r16_i1_n10|stem_c8_k3_s2_relu|mbv2_k5_e3_c12_s1,mbv2_k3_e2_c12_s1|"
                               "mbv3_k3_e4_c16_s2_se0.25_hswish|head_c32_relu")
    pruned = ArchConfig.from_str("r16_i1_n10|stem_c8_k3_s2_relu|mbv2_k5_e3_c12_s1,mbv2_k3_e2_m11_c12_s1_noskip|"
                                 "mbv3_k3_e4_c16_s2_se0.25_q3_hswish|head_c32_relu")
    assert space.validate(grid) is grid
    assert pruned.explicit and not grid.explicit and pruned.on_grid() == grid
    with pytest.raises(SpaceError) as err:
        space.validate(pruned)
    assert str(err.value) == (
        "stage 0 block 1 mbv2_k3_e2_m11_c12_s1_noskip states explicit widths (m11, noskip), which are off the "
        "search grid of space 'tiny' (a pruned block is not in a space; check the network it was pruned from "
        "with validate_parent)")
    for refuse in (space.to_genes, space.encode, lambda a: space.mutate(a, np.random.default_rng(0))):
        with pytest.raises(SpaceError, match="off the search grid"):
            refuse(pruned)
    assert space.validate_parent(pruned) == grid
    assert space.validate_parent(grid) == grid
    wider = ArchConfig.from_str(pruned.to_str().replace("relu|mbv2_k5_e3_c12", "relu|mbv2_k7_e3_c12"))
    with pytest.raises(SpaceError, match="stage 0 block 0 kernel 7 is outside the space; allowed: 3, 5"):
        space.validate_parent(wider)
