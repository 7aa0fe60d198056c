"""File-name pieces: sweep run ids, matrix answer files and environment keys all come from one `slug`."""

from __future__ import annotations

from bloodwork.slug import slug
from bloodwork.sweep import SweepSpec, cells


def test_runs_of_other_characters_become_one_dash_and_none_at_the_ends():
    assert slug("local:smollm2+lora=runs/sft") == "local-smollm2-lora-runs-sft"
    assert slug("  repo-fix/sqlparse-784 ") == "repo-fix-sqlparse-784"
    assert slug("sqlparse 0.4.4", keep=".") == "sqlparse-0.4.4"


def test_a_cut_name_keeps_two_long_names_apart_only_with_a_digest():
    a, b = "openai:" + "x" * 50 + "-a", "openai:" + "x" * 50 + "-b"
    assert slug(a, 40) == slug(b, 40) and len(slug(a, 40)) == 40
    assert slug(a, 40, digest=True) != slug(b, 40, digest=True)
    assert len(slug(a, 40, digest=True)) == 40 and slug(a, 40, digest=True).startswith("openai-xxx")


def test_sweep_run_ids_are_the_slugs_of_their_cell():
    spec = SweepSpec(tasks=["long-haul/ledger"], models=["scripted:a b.yaml"], chaos=["exec_fail=0.2,kill9=0.1"],
                     seeds=[3])
    [cell] = cells(spec)
    assert cell.cell_id == "long-haul-ledger__scripted-a-b-yaml__exec-fail-0-2-kill9-0-1__s3"
