"""The packages say what they are: supernets exports its main objects, the README stays inside the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_supernets_exports_the_supernet_and_its_loaders():
    import supernets
    from supernets.models import StaticNet, build_model
    from supernets.supernet import Supernet
    from supernets.training import load_supernet

    assert (supernets.Supernet, supernets.load_supernet, supernets.build_model, supernets.StaticNet) == \
        (Supernet, load_supernet, build_model, StaticNet)
    assert "arrive" not in (supernets.__doc__ or "")


def test_readme_links_stay_in_the_repository_and_name_the_joint_compression():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in text and "DESIGN.md" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        assert (ROOT / target).exists(), target
    assert "do not exist yet" not in text and "--method joint" in text and "bench_compress.py" in text


def test_library_modules_hold_no_argparse():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "nas").rglob("*.py")
                 if "argparse" in p.read_text(encoding="utf-8") and "cli" not in p.relative_to(ROOT / "nas").parts]
    assert offenders == []
