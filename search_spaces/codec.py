"""The one codec for architectures: canonical string and canonical JSON, both directions.

String grammar (segments joined by ``|``, blocks of a stage by ``,``, tokens by ``_``)::

    r224_i3_n1000 | stem_c32_k3_s2_relu6[_mp] | STAGE | STAGE ... | head_c1280[_f1280]_relu6
    STAGE = BLOCK,BLOCK,...
    BLOCK = FAMILY_k3[_e6][_m37][_b20]_c24_s2[_se0.25][_q16][_ACT][_noskip]

``r`` resolution, ``i`` input channels, ``n`` classes; ``c`` channels, ``k`` kernel, ``s`` stride, ``e``
expand ratio, ``se`` squeeze-excitation ratio, ``f`` hidden features of the head's extra linear layer,
``mp`` a 3x3 stride-2 max pool after the stem. The canonical form writes every knob a family varies (``e``
where the family expands, the activation where the family offers a choice, ``se`` when it is non-zero)
and nothing else; the decoder also accepts tokens in any order and fixed knobs stated at their value.

Explicit widths off the search grid (a pruned block), written only when set: ``m`` the middle width (an
MBConv's expanded width; a ShuffleNet unit's transformed-branch inner width), ``b`` a ShuffleNet unit's
transformed-branch output width (the other branch gives ``c`` minus it), ``q`` the SE squeeze width, and the
flag ``noskip`` (no residual connection where stride 1 and equal widths would give one). Examples:
``mbv2_k3_e6_m37_c24_s1``, ``mbv3_k5_e4_m70_c40_s1_se0.25_q16_hswish_noskip``, ``shufflev2_k3_m20_b20_c48_s2``.
In JSON the same widths are the block fields ``mid``, ``branch``, ``squeeze`` and ``noskip``, present only when
set, so an on-grid architecture keeps its canonical JSON and its key.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from search_spaces.arch import ArchConfig, BlockConfig, HeadConfig, StemConfig
from search_spaces.errors import ArchError
from search_spaces.families import ACTIVATIONS, FAMILIES, get_family

_INT = re.compile(r"[0-9]{1,9}")
_NUM = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
MAX_ARCH_STRING = 100_000
#: The optional JSON fields of a block that state widths off the search grid (see the module docstring).
EXPLICIT_FIELDS: tuple[str, ...] = ("mid", "squeeze", "branch", "noskip")


def format_ratio(value: float) -> str:
    """Shortest exact text of a ratio: 6.0 -> '6', 2.5 -> '2.5'."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


# ---------------------------------------------------------------------------------------------- encode


def block_to_str(block: BlockConfig) -> str:
    fam = get_family(block.family)
    parts = [fam.name, f"k{block.kernel}"]
    if fam.has_expand:
        parts.append(f"e{format_ratio(block.expand)}")
    if block.mid is not None:
        parts.append(f"m{block.mid}")
    if block.branch is not None:
        parts.append(f"b{block.branch}")
    parts += [f"c{block.out_channels}", f"s{block.stride}"]
    if fam.se_is_knob and block.se_ratio > 0:
        parts.append(f"se{format_ratio(block.se_ratio)}")
    if block.squeeze is not None:
        parts.append(f"q{block.squeeze}")
    if fam.act_is_knob:
        parts.append(block.activation)
    if block.noskip:
        parts.append("noskip")
    return "_".join(parts)


def explicit_tokens(block: BlockConfig) -> list[str]:
    """The block's explicit-width tokens in the order m, q, b, noskip (empty for an on-grid block)."""
    tokens = [f"{tag}{value}" for tag, value in (("m", block.mid), ("q", block.squeeze), ("b", block.branch))
              if value is not None]
    return tokens + (["noskip"] if block.noskip else [])


def block_to_dict(block: BlockConfig) -> dict[str, Any]:
    """A block's JSON fields; the explicit widths only when set, so on-grid blocks keep their canonical JSON."""
    data: dict[str, Any] = {
        "family": block.family,
        "kernel": block.kernel,
        "expand": block.expand,
        "out_channels": block.out_channels,
        "stride": block.stride,
        "se": block.se_ratio,
        "act": block.activation,
    }
    for name in EXPLICIT_FIELDS:
        value = getattr(block, name)
        if value is not None and value is not False:
            data[name] = value
    return data


def arch_to_str(arch: ArchConfig) -> str:
    stem = arch.stem
    segments = [f"r{arch.resolution}_i{arch.in_channels}_n{arch.num_classes}"]
    segments.append(f"stem_c{stem.channels}_k{stem.kernel}_s{stem.stride}_{stem.act}" + ("_mp" if stem.maxpool else ""))
    segments += [",".join(block_to_str(b) for b in stage) for stage in arch.stages]
    head = arch.head
    segments.append(f"head_c{head.channels}" + (f"_f{head.hidden}" if head.hidden else "") + f"_{head.act}")
    return "|".join(segments)


def arch_to_dict(arch: ArchConfig) -> dict[str, Any]:
    return {
        "resolution": arch.resolution,
        "in_channels": arch.in_channels,
        "num_classes": arch.num_classes,
        "stem": {
            "channels": arch.stem.channels,
            "kernel": arch.stem.kernel,
            "stride": arch.stem.stride,
            "act": arch.stem.act,
            "maxpool": arch.stem.maxpool,
        },
        "stages": [[block_to_dict(b) for b in stage] for stage in arch.stages],
        "head": {"channels": arch.head.channels, "hidden": arch.head.hidden, "act": arch.head.act},
    }


def canonical_json(data: Any) -> str:
    """Canonical JSON of plain data: sorted keys, no spaces (what keys are hashed from)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def short_key(data: Any) -> str:
    """12 hex digits of the SHA-256 of `data`'s canonical JSON: the key of architectures, plans and specs."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:12]


def arch_to_json(arch: ArchConfig) -> str:
    """Canonical JSON: sorted keys, no spaces; every field present (explicit widths only when set)."""
    return canonical_json(arch_to_dict(arch))


def arch_key(arch: ArchConfig) -> str:
    return short_key(arch_to_dict(arch))


# ---------------------------------------------------------------------------------------------- decode


def _tokens(segment: str, where: str, spec: dict[str, str], allow_act: bool) -> dict[str, Any]:
    """Parse `_`-separated tokens after the segment's tag. `spec` maps a prefix to 'int', 'num' or 'flag'."""
    found: dict[str, Any] = {}
    allowed = [f"{p}<{kind}>" if kind != "flag" else p for p, kind in spec.items()]
    if allow_act:
        allowed.append("|".join(ACTIVATIONS))
    prefixes = sorted(spec, key=len, reverse=True)  # 'se' before 's'
    for token in segment.split("_"):
        value: Any
        if allow_act and token in ACTIVATIONS:
            name, value = "act", token
        else:
            name = next((p for p in prefixes if token.startswith(p)), "")
            kind = spec.get(name)
            rest = token[len(name):]
            if kind == "flag" and rest == "":
                value = True
            elif kind == "int" and _INT.fullmatch(rest):
                value = int(rest)
            elif kind == "num" and _NUM.fullmatch(rest):
                value = float(rest)
            else:
                raise ArchError(f"{where}: cannot read token {token!r}; allowed tokens: {', '.join(allowed)}")
        if name in found:
            raise ArchError(f"{where}: token {name!r} is given twice")
        found[name] = value
    return found


def _require(found: dict[str, Any], names: dict[str, str], where: str) -> None:
    missing = [f"{p} ({meaning})" for p, meaning in names.items() if p not in found]
    if missing:
        raise ArchError(f"{where}: missing {', '.join(missing)}")


def _decode_io(segment: str) -> dict[str, Any]:
    where = f"input segment {segment!r}"
    if not segment.startswith("r"):
        raise ArchError(f"{where}: an architecture string starts with r<resolution>_i<channels>_n<classes>")
    found = _tokens(segment, where, {"r": "int", "i": "int", "n": "int"}, allow_act=False)
    _require(found, {"r": "resolution", "i": "input channels", "n": "classes"}, where)
    return found


def _decode_stem(segment: str) -> StemConfig:
    where = f"stem segment {segment!r}"
    tag, _, body = segment.partition("_")
    if tag != "stem" or not body:
        raise ArchError(f"{where}: the second segment is the stem, e.g. stem_c32_k3_s2_relu6")
    found = _tokens(body, where, {"c": "int", "k": "int", "s": "int", "mp": "flag"}, allow_act=True)
    _require(found, {"c": "channels", "k": "kernel", "s": "stride", "act": "activation"}, where)
    return StemConfig(found["c"], found["k"], found["s"], found["act"], maxpool=found.get("mp", False))


def _decode_head(segment: str) -> HeadConfig:
    where = f"head segment {segment!r}"
    tag, _, body = segment.partition("_")
    if tag != "head" or not body:
        raise ArchError(f"{where}: the last segment is the head, e.g. head_c1280_relu6")
    found = _tokens(body, where, {"c": "int", "f": "int"}, allow_act=True)
    _require(found, {"c": "channels", "act": "activation"}, where)
    return HeadConfig(found["c"], found.get("f", 0), found["act"])


def block_from_str(text: str, where: str = "block") -> BlockConfig:
    where = f"{where} {text!r}"
    name, _, body = text.partition("_")
    if name not in FAMILIES:
        raise ArchError(f"{where}: unknown block family {name!r}; known families: {', '.join(FAMILIES)}")
    fam = FAMILIES[name]
    spec = {"k": "int", "c": "int", "s": "int", "se": "num", "m": "int", "q": "int", "b": "int", "noskip": "flag"}
    if fam.has_expand:
        spec["e"] = "num"
    found = _tokens(body, where, spec, allow_act=True) if body else {}
    required = {"k": "kernel", "c": "out channels", "s": "stride"}
    if fam.has_expand:
        required["e"] = "expand ratio"
    _require(found, required, where)
    try:
        return BlockConfig(name, found["k"], found.get("e", 1.0), found["c"], found["s"], found.get("se"),
                           found.get("act"), mid=found.get("m"), squeeze=found.get("q"),
                           noskip=found.get("noskip", False), branch=found.get("b"))
    except ArchError as err:
        raise ArchError(f"{where}: {err}") from None


def arch_from_str(text: str) -> ArchConfig:
    """Decode an architecture string; every failure is an `ArchError` that says where and why."""
    if not isinstance(text, str):
        raise ArchError(f"an architecture string must be text; got {type(text).__name__}")
    if len(text) > MAX_ARCH_STRING:
        raise ArchError(f"architecture string is {len(text)} characters long; at most {MAX_ARCH_STRING} allowed")
    segments = [s.strip() for s in text.strip().split("|")]
    if len(segments) < 4:
        raise ArchError(
            f"architecture string {text[:80]!r} has {len(segments)} '|'-separated segment(s); expected "
            "input|stem|stage|...|head, e.g. r32_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e4_c24_s2|head_c128_relu"
        )
    io = _decode_io(segments[0])
    stem = _decode_stem(segments[1])
    head = _decode_head(segments[-1])
    stages = []
    for s, segment in enumerate(segments[2:-1]):
        if not segment:
            raise ArchError(f"stage {s} is empty; every stage needs at least one block")
        texts = segment.split(",")
        stages.append(tuple(block_from_str(t.strip(), f"stage {s} block {b}") for b, t in enumerate(texts)))
    return ArchConfig(io["r"], io["i"], io["n"], stem, tuple(stages), head)


def _fields(data: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ArchError(f"{where} must be a JSON object; got {type(data).__name__}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise ArchError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(required + optional)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ArchError(f"{where}: missing field(s) {', '.join(missing)}")
    return data


def _block_from_dict(data: Any, where: str) -> BlockConfig:
    """One block of the JSON form; explicit widths may be absent, null or (noskip) false."""
    fields = dict(_fields(data, where, ("family", "kernel", "out_channels", "stride"),
                          ("expand", "se", "act") + EXPLICIT_FIELDS))
    if fields.get("noskip") is None:
        fields["noskip"] = False
    if not isinstance(fields["family"], str):
        raise ArchError(f"{where}: family must be text; known families: {', '.join(FAMILIES)}")
    try:
        return BlockConfig(**{"expand": 1.0, **fields})
    except ArchError as err:
        raise ArchError(f"{where}: {err}") from None


def arch_from_dict(data: Any) -> ArchConfig:
    top = _fields(data, "architecture", ("resolution", "in_channels", "num_classes", "stem", "stages", "head"))
    stem = _fields(top["stem"], "stem", ("channels",), ("kernel", "stride", "act", "maxpool"))
    head = _fields(top["head"], "head", ("channels",), ("hidden", "act"))
    if not isinstance(top["stages"], list) or not all(isinstance(s, list) for s in top["stages"]):
        raise ArchError("stages must be a JSON list of lists of blocks")
    stages = [tuple(_block_from_dict(block, f"stage {s} block {b}") for b, block in enumerate(stage))
              for s, stage in enumerate(top["stages"])]
    return ArchConfig(top["resolution"], top["in_channels"], top["num_classes"], StemConfig(**stem), tuple(stages),
                      HeadConfig(**head))


def arch_from_json(text: str) -> ArchConfig:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise ArchError(f"architecture JSON is not valid JSON: {err}") from None
    return arch_from_dict(data)
